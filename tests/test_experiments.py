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
