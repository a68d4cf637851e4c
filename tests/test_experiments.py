"""The benchmarks in experiments/ still run (tiny sizes; the numbers are not checked)."""
import json
import os
import subprocess
import sys

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
