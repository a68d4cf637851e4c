"""docs/extending.md's examples, run as written (a new data source and a new evaluation
protocol are each one module plus registration), and the README's Python snippets."""
import os
import re
import sys
import types

import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax import evals
from bt_jax.data import sources
from bt_jax.evals import common, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
EXTENDING = os.path.join(ROOT, "docs", "extending.md")


def _python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(path).read(), re.S)


def _readme_block(first_line: str, path: str = EXTENDING) -> str:
    """The python block of `path` that starts with `first_line`."""
    found = [b for b in _python_blocks(path) if b.startswith(first_line)]
    assert len(found) == 1, f"no block of {path} starts with {first_line!r}"
    return found[0]


def _module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, f"README:{name}", "exec"), module.__dict__)   # noqa: S102
    return module


def _register(monkeypatch, registry, module_name: str, code_block: str, line_block: str):
    """The page's module (exec'd as `module_name`) and its one registry line, read from
    the page and added to `registry` as written."""
    monkeypatch.setitem(sys.modules, module_name, _module(module_name,
                                                          _readme_block(code_block)))
    (name, target), = re.findall(r'"(\w+)": "([\w.:]+)",', _readme_block(line_block))
    monkeypatch.setitem(registry.entries, name, target)
    return name


def test_every_pluggable_kind_registers_one_way():
    """Objectives, sources, protocols and backbones: each registry a `Registry` of
    "module:ATTRIBUTE" lines, each line naming an object of its module."""
    from bt_jax import losses, registry
    from bt_jax.models.backbones import BACKBONES
    for reg in (losses.OBJECTIVES, sources.SOURCES, evals.PROTOCOLS, BACKBONES):
        assert isinstance(reg, registry.Registry)
        for name, target in reg.entries.items():
            module, _, attribute = target.partition(":")
            assert getattr(sys.modules[module] if module in sys.modules else
                           __import__(module, fromlist=[attribute]), attribute) is reg.get(name)
    (name, target), = re.findall(r'"(\w+)": "([\w.:]+)",', _readme_block(
        "# bt_jax/losses/__init__.py, in OBJECTIVES:"))   # the page's line is the real one
    assert losses.OBJECTIVES.entries[name] == target
    with pytest.raises(config_lib.ConfigError, match=r"Unknown model.backbone 'vit'; "
                       r"registered backbones: \['resnet18', 'resnet34', 'resnet50'\]"):
        BACKBONES.get("vit")
    with pytest.raises(ValueError, match="module:ATTRIBUTE"):
        registry.Registry("thing", "a.b", {"x": "no_colon"}, home="here")


def test_the_readme_npz_source_registers_and_loads(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 256, (n, 6, 6, 3), np.uint8),
                 labels=np.arange(n) % 3)
    with monkeypatch.context() as m:
        assert _register(m, sources.SOURCES, "bt_jax.data.sources.npz",
                         "# bt_jax/data/sources/npz.py",
                         "# bt_jax/data/sources/__init__.py, in SOURCES:") == "npz"
        test = sources.load_split("npz", "test", image_size=8, path=str(tmp_path))
        assert test.images.shape == (10, 8, 8, 3) and test.num_classes == 3
        c = config_lib.base_config()
        c.data.name, c.data.path, c.data.image_size = "npz", str(tmp_path), 8
        train = sources.pretrain_split(c.data)
        assert len(train) == 30 and train.gather_on_host
    with pytest.raises(config_lib.ConfigError, match="Unknown dataset 'npz'"):
        sources.load_split("npz", "test", image_size=8, path=str(tmp_path))


def test_the_readme_backbone_registers_and_trains_its_config(monkeypatch):
    import jax
    import jax.numpy as jnp
    from bt_jax.models import make_backbone
    from bt_jax.models.backbones import BACKBONES
    from bt_jax.models.factory import create_model, init_variables
    assert _register(monkeypatch, BACKBONES, "bt_jax.models.resnet26",
                     "# bt_jax/models/resnet26.py",
                     "# bt_jax/models/backbones.py, in BACKBONES:") == "resnet26"
    net = make_backbone("resnet26", stem="cifar", width=0.0625)
    variables = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)),
                                                train=False))
    assert len([k for k in variables["params"] if k.startswith("layer")]) == 8   # 2+2+2+2
    assert variables["params"]["layer4_1"]["conv3"]["kernel"].shape[-1] == 128  # 512/16*4
    c = config_lib.base_config()
    c.model.backbone, c.model.stem, c.model.width = "resnet26", "cifar", 0.0625
    c.model.projector_dims, c.data.image_size = (32, 32), 16
    config_lib.validate(c)
    v = jax.eval_shape(lambda: init_variables(create_model(c.model), jax.random.key(0), 16))
    assert "backbone" in v["params"] and "projector" in v["params"]


def test_the_readme_class_mean_protocol_runs_beside_the_others(monkeypatch, capsys):
    assert _register(monkeypatch, evals.PROTOCOLS, "bt_jax.evals.class_mean",
                     "# bt_jax/evals/class_mean.py",
                     "# bt_jax/evals/__init__.py, in PROTOCOLS:") == "class_mean"
    c = config_lib.base_config()
    # registered, it runs only where eval.protocols names it: not by default
    assert tuple(c.eval.protocols) == evals.BUILT_IN
    assert "class_mean" not in [p.name for p in runner.selected_protocols(c.eval)]
    c.eval.protocols = ("linear_fast", "knn", "class_mean")
    c.eval.linear_protocol = "linear_fast"
    config_lib.validate(c)
    assert [p.name for p in runner.selected_protocols(c.eval)] == list(c.eval.protocols)

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    y_train, y_test = np.arange(90) % 3, np.arange(30) % 3
    x_train = centres[y_train] + rng.normal(size=(90, 16))
    x_test = centres[y_test] + rng.normal(size=(30, 16))
    split = types.SimpleNamespace(labels=y_train, num_classes=3)
    ctx = common.Context(split, types.SimpleNamespace(labels=y_test, num_classes=3),
                         split, (np.zeros(3), np.ones(3)), seed=0, image_size=16)
    rep = common.Representation("features", None, {}, x_train.astype(np.float32),
                                x_test.astype(np.float32))
    capsys.readouterr()
    r = runner.probe_representation(ctx, rep, runner.selected_protocols(c.eval), c.eval)
    lines = capsys.readouterr().out.splitlines()
    # each protocol, the user's too, has the same progress line: name, result, time
    pattern = r"Evaluation \| features: (.+): top-1 \d+\.\d\d% \(\d+\.\d s\)$"
    assert [re.match(pattern, line).group(1) for line in lines] == [
        "linear probe (fast, L-BFGS, 7 L2 strengths)", "kNN (k=200)", "nearest class mean"]
    # float64 NumPy reference: cosine similarity to each class's mean direction
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)   # noqa: E731
    means = unit(np.stack([unit(x_train)[y_train == k].mean(0) for k in range(3)]))
    want = np.mean(np.argmax(unit(x_test) @ means.T, 1) == y_test)
    assert r["class_mean_top1"] == pytest.approx(want)
    assert {"linear_fast_top1", "knn_top1", "linear_top1"} <= set(r)
    # and its column in the closing table, beside the built-in ones
    header, row = runner.format_table(r).splitlines()[:2]
    assert header.split()[-5:-2] == ["kNN", "class", "mean"]
    assert row.split()[-1] == f"{100 * want:.1f}%"
    assert c.eval.class_mean.top_k == 1      # its own settings, declared beside its code
    c.eval.class_mean.top_k = 0
    with pytest.raises(config_lib.ConfigError, match="eval.class_mean.top_k must be >= 1"):
        config_lib.validate(c)


def test_unknown_protocols_and_an_unlisted_linear_protocol_are_one_clear_error():
    c = config_lib.base_config()
    c.eval.protocols = ("knn", "linear_sgd", "nope")
    with pytest.raises(config_lib.ConfigError, match=r"unknown protocol\(s\) \['nope'\]"):
        config_lib.validate(c)
    c.eval.protocols = ("knn", "linear_fast")
    with pytest.raises(config_lib.ConfigError, match="'linear_sgd' reports a protocol that "
                       "eval.protocols"):
        config_lib.validate(c)


def test_the_readmes_python_snippets_run_as_written(tmp_path, monkeypatch):
    """Every python block of README.md, run in order in one namespace, on a tiny exported
    run in place of runs/demo and with the embeddings the loss snippet leaves to the user."""
    import jax
    import jax.numpy as jnp
    from bt_jax.io import export
    from bt_jax import train
    c = config_lib.base_config()
    c.data.image_size = 16
    c.model.backbone, c.model.stem, c.model.width = "resnet18", "cifar", 0.0625
    c.model.projector_dims = (32, 32)
    variables = train.backbone_variables(train.init_variables(
        train.create_model(c.model), jax.random.key(0), 16))
    os.makedirs(tmp_path / "runs" / "demo")
    import json
    (tmp_path / "runs" / "demo" / "config.json").write_text(c.to_json_best_effort())
    export.write_backbone(str(tmp_path / "runs" / "demo"), jax.device_get(variables), c.model,
                          (np.full(3, 0.5), np.full(3, 0.25)), image_size=c.data.image_size,
                          dataset=c.data.name)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"z_a": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
                 "z_b": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    blocks = _python_blocks(README)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)   # noqa: S102
    features = namespace["encode"](rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    assert features.shape == (3, 32) and np.isfinite(np.asarray(features)).all()
    assert np.isfinite(float(namespace["loss"])) and float(namespace["loss"]) > 0
    assert callable(namespace["tx"].update)
    assert json.load(open("runs/demo/backbone.json"))["image_size"] == 16
