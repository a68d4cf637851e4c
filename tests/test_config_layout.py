"""Each component owns its settings (eval.<protocol>.*, loss.<kind>.*, model.*), config.py
imports none of them, old field names get one line naming the new one, and an old run's
config.json (a fixture of 2026-12-02's layout) is translated on read."""
import ast
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from bt_jax import cli, config as config_lib, evals, losses
from bt_jax.models import factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# config.json of `make demo` (configs/digits.py) as the code of 2026-12-02 wrote it.
OLD_CONFIG_JSON = os.path.join(ROOT, "tests", "fixtures", "digits_config_2026-12-02.json")


@pytest.mark.parametrize("part", ["schema", "legacy", "tree"])
def test_the_configs_schema_imports_no_model_loss_or_eval_module(part):
    """Only bt_jax/config/__init__.py, the assembler, imports the components."""
    tree = ast.parse(open(os.path.join(ROOT, "bt_jax", "config", f"{part}.py")).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.update(f"{node.module}.{a.name}" for a in node.names)
    assert imported and not [m for m in imported
                             if m.startswith(("bt_jax.models", "bt_jax.losses", "bt_jax.evals"))
                             or m in ("bt_jax.models", "bt_jax.losses", "bt_jax.evals")], imported


def test_each_component_declares_its_settings_where_the_config_puts_them():
    c = config_lib.base_config()
    for name in evals.PROTOCOLS:
        protocol = evals.get_protocol(name)
        assert protocol.defaults, name
        assert dict(c.eval[name]) == dict(protocol.defaults)
    assert dict(c.loss.info_nce) == losses.OBJECTIVES["info_nce"].defaults
    assert dict(c.loss.vicreg) == losses.OBJECTIVES["vicreg"].defaults
    bt = losses.OBJECTIVES["barlow_twins"].defaults
    assert {k: c.loss[k] for k in bt} == bt      # Barlow Twins' own at loss.* (the contract)
    assert dict(c.model) == factory.DEFAULTS
    assert tuple(c.eval.protocols) == evals.BUILT_IN == evals.PROTOCOLS.names()
    assert set(c.monitor) == {"online_probe", "online_probe_lr", "knn_every_epochs",
                              "diagnostics_every_steps"}
    # No protocol's field is left flat under eval.
    assert set(k for k, v in c.eval.items() if not isinstance(v, ml_collections.ConfigDict)) == {
        "enabled", "batch_size", "baselines", "protocols", "probe_train_examples",
        "linear_protocol", "tsne_points"}


@pytest.mark.parametrize("field, value, message", [
    ("eval.knn.k", 0, "eval.knn.k and eval.knn.bank_chunk must be positive"),
    ("eval.linear_fast.holdout_fraction", 1.0, "eval.linear_fast.holdout_fraction"),
    ("eval.linear_sgd.crop_scale", (0.5, 0.2), "eval.linear_sgd.crop_scale"),
    ("eval.finetune.flip_prob", 2.0, "eval.finetune.flip_prob"),
    ("eval.finetune.fractions", (0.0,), "eval.finetune.fractions"),
    ("loss.info_nce.temperature", 0.0, "loss.info_nce.temperature must be positive"),
    ("loss.vicreg.variance_weight", -1.0, "loss.vicreg's weights"),
    ("loss.lambd", -1.0, "loss.lambd must be >= 0"),
    ("model.width", 0.0, "model.width must be positive"),
    ("monitor.knn_every_epochs", -1.0, "monitor.knn_every_epochs must be >= 0"),
])
def test_each_component_checks_its_own_settings(field, value, message):
    c = config_lib.base_config()
    config_lib.validate(c)
    *parents, leaf = field.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
        config_lib.validate(c)


def test_an_old_name_in_a_recipe_is_one_line_naming_the_new_one():
    for old, new in config_lib.RENAMED.items():
        c = config_lib.base_config()
        *parents, leaf = old.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = 1            # an unlocked ConfigDict takes a new field silently
        with pytest.raises(config_lib.ConfigError) as e:
            config_lib.validate(c)
        assert str(e.value).startswith(f"{old} is now {new}:") and "\n" not in str(e.value)
    c = config_lib.base_config()
    c.eval.knn.kk = 3              # a typo, not an old name
    with pytest.raises(config_lib.ConfigError, match=r"unknown config field 'eval.knn.kk'; "
                       r"eval.knn's fields are \['bank_chunk', 'k', 'temperature'\]"):
        config_lib.validate(c)


def test_an_old_name_on_the_command_line_is_one_line_naming_the_new_one(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"^--config.eval.fast_l2_grid: "
                       r"eval.fast_l2_grid is now eval.linear_fast.l2_grid"):
        cli.load_recipe(os.path.join(ROOT, "configs", "digits.py"),
                        ("--config.eval.fast_l2_grid=(0.1,)",))
    r = subprocess.run([sys.executable, "-m", "bt_jax.main", "--config", "configs/digits.py",
                        "--workdir", str(tmp_path / "run"), "--config.eval.semi_fractions=()"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --config.eval.semi_fractions: eval.semi_fractions is now "
        "eval.finetune.fractions: write --config.eval.finetune.fractions=... (or "
        "c.eval.finetune.fractions = ... in a recipe).")
    assert not (tmp_path / "run").exists()


def test_an_old_linear_protocol_value_names_the_new_one():
    c = config_lib.base_config()
    c.eval.linear_protocol = "fast"
    with pytest.raises(config_lib.ConfigError, match="'fast' is now 'linear_fast'"):
        config_lib.validate(c)


def test_an_old_config_json_translates_into_the_recipe_it_was_written_from():
    old = json.load(open(OLD_CONFIG_JSON))
    assert "knn_k" in old["eval"] and "temperature" in old["loss"]   # the old layout
    translated = config_lib.translate_saved(old)
    config = config_lib.base_config()
    config.update_from_flattened_dict(config_lib.flatten(translated))
    config_lib.validate(config)
    recipe = cli.load_recipe(os.path.join(ROOT, "configs", "digits.py"))
    assert config_lib.diff(recipe, config) == []       # every field, every value
    # The fine-tuning ran on the linear probe's views, which the old layout shared.
    assert config.eval.finetune.crop_scale == tuple(old["eval"]["linear_crop_scale"])
    assert config.eval.linear_protocol == "linear_fast"
    assert config.monitor.diagnostics_every_steps == old["eval"]["diagnostics_every_steps"]
    # Today's layout comes back unchanged.
    today = json.loads(recipe.to_json_best_effort())
    assert config_lib.translate_saved(today) == today


def test_an_old_runs_config_json_still_resumes_and_evaluates(tmp_path, capsys):
    from bt_jax import evaluate
    from bt_jax.train import workdir as workdir_lib
    run = tmp_path / "run"
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "config.json").write_text(open(OLD_CONFIG_JSON).read())
    recipe = cli.load_recipe(os.path.join(ROOT, "configs", "digits.py"))
    workdir_lib.check_resumable(str(run), recipe.model)  # the same model: no refusal
    # resuming: write_run_config prints what changed (nothing, translated)
    workdir_lib.write_run_config(str(run), recipe.to_json_best_effort(indent=2))
    assert "Resuming with a changed config" not in capsys.readouterr().out
    assert "linear_fast" in json.load(open(run / "config.json"))["eval"]   # rewritten
    (run / "config.json").write_text(open(OLD_CONFIG_JSON).read())
    config = evaluate.config_of_workdir(str(run))         # what evaluate reads
    assert config_lib.diff(recipe, config) == []


def test_a_recipe_importing_the_old_defaults_module_gets_one_line_naming_the_new(tmp_path):
    recipe = tmp_path / "old.py"
    recipe.write_text("from bt_jax.defaults import base_config\n\n\n"
                      "def get_config():\n    return base_config()\n")
    with pytest.raises(config_lib.ConfigError, match=r"bt_jax.defaults is now bt_jax.config: "
                       r"write `from bt_jax.config import base_config`"):
        cli.read_recipe(str(recipe))
    new = tmp_path / "new.py"
    new.write_text("from bt_jax.config import base_config\n\n\n"
                   "def get_config():\n    return base_config()\n")
    assert cli.read_recipe(str(new)) == config_lib.base_config()
