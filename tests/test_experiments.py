"""The benchmarks and the ablation sweeps in experiments/ run (tiny sizes; the benchmarks'
numbers are not checked)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_augment_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "experiments/bench_augment.py", "--sizes", "16",
                        "--images", "16", "--batch", "8", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
                                PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    rows = json.load(open(out))["rows"]
    assert [(row["size"], row["path"]) for row in rows] == [(16, "host tf.data"),
                                                            (16, "device JAX")]
    assert all(row["pairs_per_s"] > 0 for row in rows)


def test_bench_input_runs_both_implementations_on_the_same_cores(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "experiments/bench_input.py", "--cores", "1",
                        "--sizes", "32,64", "--images", "8", "--batch", "4", "--repeats", "1",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
                                PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    result = json.load(open(out))
    impls = [(row["size"], row["impl"]) for row in result["rows"]]
    assert impls == [(32, "tf.data (bt_jax)"), (32, "PIL reference"), (32, "device path (cpu)"),
                     (64, "tf.data (bt_jax)"), (64, "PIL reference"), (64, "tf.data crops only"),
                     (64, "device path (cpu)")]
    assert all(row["views_per_s"] > 0 for row in result["rows"])
    assert [(q["size"], q["cores"]) for q in result["ratios"]] == [(32, 1), (64, 1)]


def _ablations():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "ablations", os.path.join(ROOT, "experiments", "ablations.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablations"] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_ablation_run_is_a_valid_config_at_both_scales():
    from bt_jax.config import validate
    ab = _ablations()
    for scale in ab.SCALES.values():
        recipe = ab._load_recipe(scale.recipe)
        for sweep in ab.SWEEPS:
            runs = ab.sweep_runs(sweep, scale)
            assert "baseline" in [r.name for r in runs], sweep
            assert len({r.name for r in runs}) == len(runs), sweep
            for run in runs:
                config = ab.apply_overrides(recipe, ab.run_overrides(scale, run, {}))
                validate(config)
                for key, value in run.overrides.items():   # the override really landed
                    node = config
                    for part in key.split("."):
                        node = node[part]
                    assert node == value or tuple(node) == tuple(value), (sweep, run.name, key)


def test_ablation_runs_switch_the_intended_fields():
    ab = _ablations()
    small = ab.SCALES["small"]
    loss = {r.name: r for r in ab.sweep_runs("loss", small)}
    assert loss["redundancy_only"].overrides == {"loss.invariance_weight": 0.0}
    assert loss["invariance_only"].overrides == {"loss.lambd": 0.0}
    assert loss["no_bn_no_norm"].overrides == {"model.projector_bn": False,
                                               "loss.normalization": "none"}
    assert loss["redundancy_only"].paper == 0.1 and loss["baseline"].paper == 71.4
    batch = ab.sweep_runs("batch_size", small)
    pairs = {r.x: ab.run_overrides(small, r, {})["num_steps"]
             * ab.run_overrides(small, r, {}).get("batch_size", 256) for r in batch}
    assert len(set(pairs.values())) == 1, pairs     # every batch size sees the same pairs
    crop_only = ab.run_overrides(small, ab.sweep_runs("augmentations", small)[-1], {})
    assert crop_only["data.augment.blur_prob"] == (0.0, 0.0)
    assert crop_only["data.augment.jitter_prob"] == 0.0
    with pytest.raises(SystemExit, match="unknown config field"):
        ab.apply_overrides(ab._load_recipe(small.recipe), {"loss.lamda": 0.1})


def test_tiny_sweep_end_to_end_writes_csv_table_and_plot_and_skips_finished_runs(tmp_path,
                                                                                 capsys):
    """Two runs (cross- and auto-correlation redundancy), 2 steps each, on digits."""
    import csv
    ab = _ablations()
    args = ["--sweep", "redundancy", "--scale", "small", "--root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"),
            "--set", "data.name=digits", "--set", "data.image_size=16",
            "--set", "model.projector_dims=(32, 32, 32)", "--set", "model.width=0.0625",
            "--set", "num_steps=2", "--set", "batch_size=32", "--set", "checkpoint.every_steps=1",
            "--set", "eval.probe_train_examples=300", "--set", "eval.knn_k=5",
            "--set", "eval.fast_max_iter=10", "--set", "eval.online_probe=False"]
    assert ab.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "results" / "redundancy.csv")))
    assert [r["run"] for r in rows] == ["baseline", "redundancy_auto"]
    for r in rows:
        assert r["status"] == "done" and r["steps"] == "2"
        assert 10.0 <= float(r["linear_top1"]) <= 100.0 and 10.0 <= float(r["knn_top1"]) <= 100
    results = json.load(open(tmp_path / "runs" / "small" / "baseline" / "results.json"))
    assert results["num_train"] == 300        # eval.probe_train_examples reached the probes
    assert abs(float(rows[0]["linear_top1"]) - 100 * results["linear_top1"]) < 0.01
    table = open(tmp_path / "results" / "redundancy.md").read()
    assert "| cross-correlation (baseline) | " in table and "| 71.4 |" in table
    assert "--sweep redundancy --scale small" in table
    png = open(tmp_path / "results" / "redundancy.png", "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # A rerun trains nothing: both runs are finished.
    capsys.readouterr()
    assert ab.main(args) == 0
    out = capsys.readouterr().out
    assert "redundancy/baseline: done, skipped" in out
    assert "redundancy/redundancy_auto: done, skipped" in out
    # Other overrides in the same workdirs are refused, not silently mixed in.
    with pytest.raises(SystemExit, match="other overrides"):
        ab.main(args[:-2] + ["--set", "eval.online_probe=True"])
