"""The package's shape: no import cycles among bt_jax modules, function-local imports
included (a local import hides a cycle; it does not remove it); no arrow back up a layer;
one run assembly, one registry style, one command-line convention."""
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
    # The registries import their entries by name (`bt_jax.registry`): count those too.
    for holder, reg in _registries().items():
        graph[holder] |= set(reg.modules())
    return graph


def _registries() -> dict:
    """{the module that holds a registry: the registry}."""
    from bt_jax import evals, losses
    from bt_jax.data import sources
    from bt_jax.models import backbones
    return {"bt_jax.evals": evals.PROTOCOLS, "bt_jax.losses": losses.OBJECTIVES,
            "bt_jax.data.sources": sources.SOURCES, "bt_jax.models.backbones":
            backbones.BACKBONES}


ENTRY_POINTS = ("bt_jax.main", "bt_jax.evaluate", "bt_jax.convert", "bt_jax.plan.__main__")


def _calls(module: str) -> set:
    """Names of the functions a module calls (`f(...)` and `x.f(...)`)."""
    tree = ast.parse(open(_modules()[module]).read())
    return {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
            for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, (ast.Attribute, ast.Name))}


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
    assert "bt_jax.data.sources.memory" in graph["bt_jax.data.sources"]
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


def test_registries_are_imported_only_by_name():
    """Every registry's modules exist, and `importlib.import_module` (the by-name import)
    is used by bt_jax.registry alone."""
    modules = _modules()
    for reg in _registries().values():
        assert set(reg.modules()) <= set(modules)
    for module, path in modules.items():
        if module != "bt_jax.registry":
            assert "import_module(" not in open(path).read() or module.startswith(
                "bt_jax.plan.gpus"), module   # (gpus.py loads JAX's CUDA plugin)


def test_no_module_of_bt_jax_is_over_400_lines():
    long = {path: n for path in _modules().values()
            if (n := sum(1 for _ in open(path))) > 400}
    assert not long, f"files over 400 lines: {long}"


def test_components_do_not_reach_back_into_the_config_or_the_trainer():
    """Data flows config -> sources -> views -> step -> evals: no module of the components
    imports config.py, its assembler (defaults.py) or the trainer, and config.py imports
    no component (it is handed their parts)."""
    graph = import_graph()
    upper = {"bt_jax.cli", *ENTRY_POINTS}
    for module, targets in graph.items():
        if module.startswith(("bt_jax.losses", "bt_jax.models", "bt_jax.evals",
                              "bt_jax.data")):
            back = {t for t in targets if t in upper
                    or t.startswith(("bt_jax.train", "bt_jax.config"))}
            assert not back, f"{module} imports {sorted(back)}"
    for part in ("bt_jax.config.schema", "bt_jax.config.legacy", "bt_jax.config.tree"):
        assert not {t for t in graph[part]
                    if t.startswith(("bt_jax.losses", "bt_jax.models", "bt_jax.evals"))}


def test_the_trainer_and_the_io_package_import_no_entry_point():
    """train/ imports no command-line module; bt_jax.io (every read and write of a run)
    imports neither the trainer, the evaluations, the planner, the config nor a command."""
    graph = import_graph()
    commands = {"bt_jax.cli", *ENTRY_POINTS}
    for module, targets in graph.items():
        if module.startswith("bt_jax.train"):
            assert not targets & commands, f"{module} imports {sorted(targets & commands)}"
        if module.startswith("bt_jax.io"):
            up = {t for t in targets if t in commands or t.startswith(
                ("bt_jax.train", "bt_jax.evals", "bt_jax.plan", "bt_jax.config"))}
            assert not up, f"{module} imports {sorted(up)}"


def test_one_run_assembly_for_every_entry_point():
    """The trainer, the planner, the evaluation CLI and the benchmark build their run with
    `train.setup.assemble`; only it builds the programs, and only it (and the pipeline
    it calls) counts steps per epoch."""
    for module in ("bt_jax.train.loop", "bt_jax.plan.compile", "bt_jax.evaluate"):
        assert "assemble" in _calls(module), module
    bench = ast.parse(open(os.path.join(ROOT, "experiments", "benchmark.py")).read())
    assert any(isinstance(n, ast.Attribute) and n.attr == "assemble" for n in ast.walk(bench))
    for module in _modules():
        calls = _calls(module)
        if module != "bt_jax.train.setup":
            assert "build_programs" not in calls, module
        if not module.startswith(("bt_jax.train.setup", "bt_jax.data")):
            assert not calls & {"steps_per_epoch", "full_batches"}, module


def test_the_entry_points_share_one_command_line_convention():
    """main, evaluate, convert and plan: each defines its flags (`define`) and its work
    (`run`) and runs through `cli.main`; no other parser (argparse, absl's app.run)."""
    for module in ENTRY_POINTS:
        text = open(_modules()[module]).read()
        tree = ast.parse(text)
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"define", "run"} <= names, module
        assert "cli.main(run, define, __doc__" in text, module
    for module, path in _modules().items():
        text = open(path).read()
        assert "import argparse" not in text and "app.run(" not in text, module
