"""What a newcomer meets first: every mistake is one line (exit status 2) with nothing
written, and every record a run leaves is true (results.json names its weights, errors name
the checkpoints on disk, metrics.jsonl has one row per step, evaluate reads the final
weights and takes overrides onto the run's own config)."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest

from bt_jax import config as config_lib
from bt_jax import convert
from bt_jax.io import checkpoint, run_dir, weights
from bt_jax.train import metrics_log, workdir as workdir_lib
from stderr import own_lines
from workdirs import digests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
DIGITS = ["--config", "configs/digits.py"]


def _run(module: str, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(r, pattern: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = own_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]




RECIPES = {"syntax_error": "def get_config(:\n    pass\n",
           "no_get_config": "x = 1\n",
           "raises": "def get_config():\n    return undefined_name\n"}


@pytest.mark.parametrize("case", ["resnet7", "eval_batch_0", "crop_scale", "keep_0",
                                  "syntax_error", "no_get_config", "raises",
                                  "corrupt_config_json"])
def test_a_mistake_is_one_line_and_writes_nothing(tmp_path, case):
    workdir = tmp_path / "run"
    args, pattern = {
        "resnet7": (DIGITS + ["--config.model.backbone=resnet7"],
                    r"model.backbone must be one of \['resnet18', 'resnet34', 'resnet50'\]"),
        "eval_batch_0": (DIGITS + ["--config.eval.batch_size=0"],
                         r"eval.batch_size .* must be positive; got 0"),
        "crop_scale": (DIGITS + ["--config.data.augment.crop_scale=(1.5,0.2)"],
                       r"data.augment.crop_scale must satisfy 0 < lo <= hi <= 1"),
        "keep_0": (DIGITS + ["--config.checkpoint.keep=0"], r"checkpoint.keep must be at least 1"),
        "syntax_error": (["--config", str(tmp_path / "syntax_error.py")],
                         r"syntax_error.py', line 1: invalid syntax"),
        "no_get_config": (["--config", str(tmp_path / "no_get_config.py")],
                          r"defines no get_config\(\)"),
        "raises": (["--config", str(tmp_path / "raises.py")],
                   r"loading it raised NameError: name 'undefined_name' is not defined"),
        "corrupt_config_json": (DIGITS, r"config.json' cannot be read \(JSONDecodeError.*"
                                        r"Restore it"),
    }[case]
    if case in RECIPES:
        (tmp_path / f"{case}.py").write_text(RECIPES[case])
    if case == "corrupt_config_json":
        (workdir / "checkpoints" / "4").mkdir(parents=True)
        (workdir / "config.json").write_text('{"seed": 0, "model": {')
    before = digests(workdir) if workdir.exists() else None
    r = _run("bt_jax.main", *args, "--workdir", str(workdir), "--config.num_steps=2",
             "--config.eval.enabled=False")
    _one_error_line(r, pattern)
    if before is None:
        assert not workdir.exists()
    else:
        assert digests(workdir) == before


def test_convert_into_a_missing_folder_is_one_line(tmp_path, capsys):
    src = tmp_path / "w.safetensors"
    weights.write_safetensors(str(src), {"conv1.weight": jnp.zeros((4, 3, 3, 3))})
    dst = tmp_path / "missing" / "w.safetensors"
    assert convert.main([str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err and "mkdir -p" in err
    assert not (tmp_path / "missing").exists()


def test_plan_out_naming_a_file_stops_before_compiling(tmp_path):
    out = tmp_path / "plan.txt"
    out.write_text("keep me")
    r = _run("bt_jax.plan", *DIGITS, "--topology", "local", "--out", str(out))
    _one_error_line(r, r"--out .*plan.txt' is a file, not a directory")
    assert out.read_text() == "keep me" and "Planning" not in r.stdout


def test_evaluate_applies_overrides_to_the_runs_own_config(tmp_path):
    """Without --config, --config.FIELD=VALUE overrides the run's config.json: a known
    field is taken (the run then fails for lack of weights, not for the flag), a misspelt
    one is one line."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = config_lib.base_config()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    r = _run("bt_jax.evaluate", "--workdir", str(workdir), "--config.eval.knn.k=5")
    _one_error_line(r, r"holds neither checkpoints/ nor backbone.msgpack")
    r = _run("bt_jax.evaluate", "--workdir", str(workdir), "--config.eval.knn.kk=5")
    _one_error_line(r, r"unknown config field")
    assert sorted(os.listdir(workdir)) == ["config.json"]


def test_evaluate_a_truncated_export_without_checkpoints_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config_lib.base_config().to_json_best_effort())
    (workdir / "backbone.msgpack").write_bytes(b"\x82\xa6params\x81")   # cut short
    r = _run("bt_jax.evaluate", "--workdir", str(workdir))
    _one_error_line(r, r"backbone.msgpack' cannot be read: it is truncated")


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0} for s in (5, 10, 15, 20, 25)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')   # cut
    assert metrics_log.drop_rows_after(str(path), 20) == 2
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [5, 10, 15, 20]
    log = metrics_log.MetricsLog(str(tmp_path), 40, 8)
    log.start(15)                                  # resumed from the checkpoint of step 15
    log.write(20, {"loss": 0.5})
    log.close()
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [5, 10, 15, 20]


def test_a_failed_save_names_the_checkpoints_on_disk_and_its_cause(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = checkpoint.CheckpointManager(directory, every_steps=10, keep=3)
    for step in (20, 30, 40):
        manager.maybe_save(step, {"w": jnp.full(3, step)}, force=True)
    manager.close()
    manager = checkpoint.CheckpointManager(directory, every_steps=10, keep=1)   # relaunch
    manager._pending = 50   # pylint: disable=protected-access
    full = manager._save_failed(OSError(28, "No space left on device"))  # pylint: disable=protected-access
    assert "steps 20, 30 and 40 are intact" in str(full) and "resume from step 40" in str(full)
    assert "Free disk space" in str(full)
    manager._pending = 50   # pylint: disable=protected-access
    race = manager._save_failed(OSError(39, "Directory not empty"))  # pylint: disable=protected-access
    assert "Another process saved the same step" in str(race) and "Free disk" not in str(race)
    other = checkpoint.CheckpointManager(directory, every_steps=10, keep=3)  # another writer
    other.maybe_save(50, {"w": jnp.full(3, 50)}, force=True)
    other.close()
    with pytest.raises(checkpoint.SaveError, match=r"the checkpoint of step 50 appeared there, "
                       r"written by another process\. Two runs are writing"):
        manager.maybe_save(60, {"w": jnp.full(3, 60)}, force=True)
    manager.close()


def test_a_run_trained_further_is_finished_only_with_records_of_its_own_weights(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "checkpoints", "8"))
    open(os.path.join(workdir, "backbone.msgpack"), "wb").close()
    with open(os.path.join(workdir, "backbone.json"), "w") as f:
        json.dump({"step": 4}, f)                   # the export of the shorter run
    assert workdir_lib.finished_results(workdir, 8, evaluated=False) is None
    with open(os.path.join(workdir, "backbone.json"), "w") as f:
        json.dump({"step": 8}, f)
    assert workdir_lib.finished_results(workdir, 8, evaluated=False) == {}
    results = {"linear_top1": 0.9, "weights": {"file": "backbone.msgpack", "step": 4}}
    run_dir.atomic_write(os.path.join(workdir, "results.json"), json.dumps(results))
    assert workdir_lib.finished_results(workdir, 8, evaluated=True) is None
    results["weights"]["step"] = 8
    run_dir.atomic_write(os.path.join(workdir, "results.json"), json.dumps(results))
    assert workdir_lib.finished_results(workdir, 8, evaluated=True) == results


TINY = DIGITS + ["--config.batch_size=32", "--config.data.image_size=16",
                 "--config.model.width=0.0625", "--config.model.projector_dims=(32,32)",
                 "--config.log_every_steps=1", "--config.checkpoint.every_steps=2",
                 "--config.checkpoint.keep=3", "--config.data.augment_on=device",
                 "--config.eval.baselines=False", "--config.eval.finetune.fractions=()",
                 "--config.eval.tsne_points=0"]


@pytest.mark.slow   # two trainings and three evaluations of a tiny model: about 3 minutes
def test_results_name_their_weights_and_evaluate_reads_the_final_export(tmp_path):
    workdir = str(tmp_path / "run")
    r = _run("bt_jax.main", *TINY, "--workdir", workdir, "--config.num_steps=4", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.load(open(os.path.join(workdir, "results.json")))
    assert first["weights"]["step"] == 4 and first["evaluated"] == "backbone.msgpack (step 4)"
    # trained further: every number is of the new weights, none of step 4's is left
    r = _run("bt_jax.main", *TINY, "--workdir", workdir, "--config.num_steps=8", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    second = json.load(open(os.path.join(workdir, "results.json")))
    assert second["weights"]["step"] == 8 and second["weights"]["digest"] != \
        first["weights"]["digest"]
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
             if "loss" in l]
    assert steps == list(range(1, 9))
    # evaluate without --config: the override applies to the run's config.json
    r = _run("bt_jax.evaluate", "--workdir", workdir, "--config.eval.knn.k=5", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluating backbone.msgpack (step 8)" in r.stdout and "kNN (k=5)" in r.stdout
    third = json.load(open(os.path.join(workdir, "results.json")))
    assert third["weights"] == second["weights"]
    assert third["train_seconds"] == second["train_seconds"]     # training's, same weights
    # a corrupt newest checkpoint: the finished run's export is read, nothing is said of it
    newest = os.path.join(workdir, "checkpoints", "8")
    for root, _, files in os.walk(newest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    r = _run("bt_jax.evaluate", "--workdir", workdir, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Evaluating backbone.msgpack (step 8)" in r.stdout
    # the export cut short too: one warning, and the newest readable checkpoint (step 6)
    path = os.path.join(workdir, "backbone.msgpack")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    r = _run("bt_jax.evaluate", "--workdir", workdir, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [l for l in r.stdout.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 2, r.stdout        # the export, then checkpoint 8
    assert "backbone.msgpack' cannot be read" in warnings[0]
    assert "checkpoint at step 8" in warnings[1] and "bound method" not in warnings[1]
    assert "Evaluating checkpoints/6 (step 6)" in r.stdout
    assert json.load(open(os.path.join(workdir, "results.json")))["weights"]["step"] == 6
    assert not os.path.exists(os.path.join(workdir, "run.lock"))
    shutil.rmtree(workdir)


def test_the_tpu_is_left_out_only_where_libtpu_is_installed_and_no_tpu_is_attached(
        monkeypatch):
    from bt_jax import platforms
    monkeypatch.setattr(platforms, "_installed", lambda module: module == "libtpu")
    monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
    env = {}
    assert platforms.skip_absent_accelerators(env) == "cpu" and env == {"JAX_PLATFORMS": "cpu"}
    env = {"JAX_PLATFORMS": "tpu"}                   # the user's choice stands
    assert platforms.skip_absent_accelerators(env) is None and env == {"JAX_PLATFORMS": "tpu"}
    monkeypatch.setattr(platforms, "tpu_attached", lambda: True)
    env = {}
    assert platforms.skip_absent_accelerators(env) is None and env == {}        # a TPU host
    monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
    monkeypatch.setattr(platforms, "_installed", lambda module: False)
    assert platforms.skip_absent_accelerators(env) is None and env == {}        # no libtpu


def test_the_gpu_is_left_out_where_the_cuda_plugin_is_installed_and_no_gpu_is_visible(
        monkeypatch):
    from bt_jax import platforms
    monkeypatch.setattr(platforms, "_installed", lambda m: m == "jax_plugins.xla_cuda12")
    monkeypatch.setattr(platforms, "nvidia_gpu_visible", lambda: False)
    env = {}
    assert platforms.skip_absent_accelerators(env) == "cpu" and env == {"JAX_PLATFORMS": "cpu"}
    monkeypatch.setattr(platforms, "nvidia_gpu_visible", lambda: True)
    env = {}
    assert platforms.skip_absent_accelerators(env) is None and env == {}        # a GPU host
    # libtpu and the CUDA plugin on a GPU host with no TPU: the GPU, then the CPU
    monkeypatch.setattr(platforms, "_installed",
                        lambda m: m in ("libtpu", "jax_plugins.xla_cuda12"))
    monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
    assert platforms.skip_absent_accelerators(env) == "cuda,cpu"


@pytest.mark.libtpu
def test_with_libtpu_installed_and_no_tpu_training_prints_no_tpu_errors(tmp_path):
    from bt_jax import platforms
    if platforms.tpu_attached():
        pytest.skip("a TPU is attached to this host: the TPU backend is wanted here")
    env = {k: v for k, v in ENV.items() if k != "JAX_PLATFORMS"}      # as a user runs it
    r = subprocess.run([sys.executable, "-m", "bt_jax.main", *TINY, "--workdir",
                        str(tmp_path / "run"), "--config.num_steps=1",
                        "--config.eval.enabled=False"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not re.search(r"E0000|TPU|libtpu|InitGoogle", r.stderr), r.stderr[-3000:]
    assert "step      1/1" in r.stdout


def test_an_error_whose_message_is_a_repr_is_reported_by_its_cause():
    class Bound(Exception):
        def __str__(self):
            return "<bound method pybind11_detail_function_record_v1_ of <object at 0x1>>"
    try:
        try:
            raise ValueError("OCDBT manifest is truncated")
        except ValueError as cause:
            raise Bound() from cause
    except Bound as e:
        assert checkpoint._first_line(e) == "OCDBT manifest is truncated"  # pylint: disable=protected-access
    assert checkpoint._first_line(Bound()) == "Bound"  # pylint: disable=protected-access


def _with(config, name: str, value):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        node = c
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def test_every_numeric_field_at_minus_one_is_refused_before_the_run_starts():
    """Every number of a recipe set to -1, one at a time: config_lib.validate (which runs
    before anything is written) refuses each with a ConfigError; set to 0, none raises
    anything but a ConfigError (0 is meaningful for many: off, none, the invariance term
    only)."""
    from bt_jax import config as config_lib
    from bt_jax.cli import load_recipe
    base = load_recipe("configs/digits.py")
    numbers = {name: v for name, v in config_lib.flatten(base).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert len(numbers) > 50
    accepted = []
    for name, value in numbers.items():
        try:
            config_lib.validate(_with(base, name, type(value)(-1)))
            accepted.append(name)
        except config_lib.ConfigError as e:
            assert "\n" not in str(e)
        try:
            config_lib.validate(_with(base, name, type(value)(0)))
        except config_lib.ConfigError:
            pass
    assert accepted == []
