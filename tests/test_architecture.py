"""The package's shape: no import cycles among bt_jax modules, function-local imports
included (a local import hides a cycle; it does not remove it)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict:
    """{dotted module name: path} of every module under bt_jax/."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "bt_jax")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def import_graph() -> dict:
    """{module: the bt_jax modules it imports anywhere in its file}."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:   # relative: from its package, up level - 1
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:   # `from pkg import mod` imports the module pkg.mod
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    # bt_jax.evals imports its protocols by name (importlib): count those imports too.
    from bt_jax import evals
    graph["bt_jax.evals"] |= {f"bt_jax.evals.{name}" for name in evals.PROTOCOLS}
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_bt_jax_modules():
    graph = import_graph()
    assert len(graph) > 20
    assert "bt_jax.train" in graph["bt_jax.main"]   # imported inside a function
    assert "bt_jax.evals.knn" in graph["bt_jax.evals"]      # imported by name
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_local_import_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_listed_protocol_is_a_module_with_its_protocol():
    from bt_jax import evals
    for name in evals.PROTOCOLS:
        assert os.path.exists(os.path.join(ROOT, "bt_jax", "evals", f"{name}.py"))
        assert evals.get_protocol(name).name == name


def test_no_module_of_bt_jax_is_over_400_lines():
    long = {path: n for path in _modules().values()
            if (n := sum(1 for _ in open(path))) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_components_do_not_reach_back_into_the_config_or_the_trainer():
    """Data flows config -> sources -> views -> step -> evals: no module of the components
    imports config.py, its assembler (defaults.py) or the trainer, and config.py imports
    no component (it is handed their parts)."""
    graph = import_graph()
    upper = {"bt_jax.config", "bt_jax.defaults", "bt_jax.cli", "bt_jax.main", "bt_jax.train",
             "bt_jax.evaluate"}
    for module, targets in graph.items():
        if module.startswith(("bt_jax.losses", "bt_jax.models", "bt_jax.evals",
                              "bt_jax.data")):
            back = {t for t in targets if t in upper or t.startswith("bt_jax.train.")}
            assert not back, f"{module} imports {sorted(back)}"
    assert not {t for t in graph["bt_jax.config"]
                if t.startswith(("bt_jax.losses", "bt_jax.models", "bt_jax.evals"))}
