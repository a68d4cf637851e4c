"""Final numbers of a chosen Fashion-MNIST recipe on the test split, over seeds.

Each run is `python -m bt_jax.main --config RECIPE --workdir ROOT/NAME-sSEED
--config.seed=SEED` with data.validation_examples=0 (pretraining and the probes use all
60,000 training images; the probes are scored on the 10,000 test images), timed here as a
whole command. Only recipes chosen on the validation split (fashion_mnist_tuning.py) belong
here. One CSV row per run; the summary gives each accuracy's mean, sample standard
deviation and range over the seeds, and checks the targets of the quick recipe:

    python experiments/fashion_mnist_test.py --recipe configs/fashion_mnist_quick.py \
        --name quick --seeds 0,1,2
    python experiments/fashion_mnist_test.py --summary --name quick

A finished run is not run again; a killed one resumes from its checkpoint and its wall
time adds up. The machine must be otherwise idle for the wall times to mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist_tuning as tuning  # noqa: E402  (the tuning log's readers and writers)
from bt_jax.io.run_dir import read_json  # noqa: E402

CSV_PATH = os.path.join(ROOT, "experiments", "results", "fashion_mnist_test.csv")
FIELDS = ("name", "recipe", "seed", "status", "wall_min", "train_pairs_per_s",
          "monitor_share", "test_linear_top1", "test_knn_top1", "pixels_linear_top1",
          "pixels_knn_top1", "random_linear_top1", "random_knn_top1", "date")
ACCURACIES = FIELDS[7:13]


def command(recipe: str, workdir: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "bt_jax.main", f"--config={recipe}", f"--workdir={workdir}",
            "--config.data.validation_examples=0", f"--config.seed={seed}"]


def row_of(name: str, recipe: str, seed: int, workdir: str) -> dict:
    """The CSV row of one seed's run, from its workdir."""
    record = read_json(os.path.join(workdir, "timing.json")) or {}
    numbers = tuning.measured(workdir, record.get("seconds"), "test")
    numbers["status"] = numbers["status"] or record.get("status", "todo")
    return {"name": name, "recipe": recipe, "seed": seed, **numbers,
            "date": record.get("date", "")}


def write_row(row: dict, path: str = CSV_PATH) -> None:
    """Adds the row, or replaces the row of the same name and seed."""
    tuning.write_row(row, path, FIELDS, key=("name", "seed"))


def run_seed(name: str, recipe: str, seed: int, root: str, csv_path: str = CSV_PATH) -> dict:
    """Runs (or resumes, or skips when finished) one seed and logs its row."""
    workdir = os.path.join(root, f"{name}-s{seed}")
    os.makedirs(workdir, exist_ok=True)
    record_path = os.path.join(workdir, "timing.json")
    record = read_json(record_path) or {"seconds": 0.0}
    if "knn_top1" not in (read_json(os.path.join(workdir, "results.json")) or {}):
        cmd = command(recipe, workdir, seed)
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        start = time.perf_counter()
        status = subprocess.call(cmd, cwd=ROOT)
        record["seconds"] += time.perf_counter() - start
        record["status"] = "done" if status == 0 else f"failed (exit {status})"
        record["date"] = time.strftime("%Y-%m-%d")
        with open(record_path, "w") as f:
            json.dump(record, f, indent=2)
    row = row_of(name, recipe, seed, workdir)
    write_row(row, csv_path)
    print(json.dumps(row), flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    """{field: {"mean", "std", "min", "max", "n"}} over the finished rows (std: sample
    standard deviation, 0 for one row), for the accuracies and the wall minutes."""
    done = [r for r in rows if r["status"] == "done"]
    out = {}
    for key in ("wall_min", "train_pairs_per_s") + ACCURACIES:
        values = [float(r[key]) for r in done if r.get(key) not in (None, "")]
        if values:
            out[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "n": len(values)}
    return out


def quick_targets(rows: list[dict]) -> dict:
    """The quick recipe's targets, per seed: wall time <= 15 min, linear >= 86.5% and at
    least 2 points above the same run's pixels, kNN above the same run's pixel kNN."""
    out = {}
    for r in rows:
        if r["status"] != "done" or not r.get("pixels_linear_top1"):
            continue
        lin, knn = float(r["test_linear_top1"]), float(r["test_knn_top1"])
        out[str(r["seed"])] = {
            "wall_le_15_min": float(r["wall_min"]) <= 15.0,
            "linear_ge_86.5": lin >= 86.5,
            "linear_ge_pixels_plus_2": lin >= float(r["pixels_linear_top1"]) + 2.0,
            "knn_gt_pixels": knn > float(r["pixels_knn_top1"])}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="configs/fashion_mnist_quick.py")
    p.add_argument("--name", required=True, help="the recipe's name in the CSV")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",") if v], default=[])
    p.add_argument("--root", default=os.path.join(ROOT, "runs", "fmnist_test"))
    p.add_argument("--csv", default=CSV_PATH)
    p.add_argument("--summary", action="store_true", help="print the summary of --name")
    args = p.parse_args(argv)
    for seed in args.seeds:
        run_seed(args.name, args.recipe, seed, args.root, args.csv)
    rows = [r for r in tuning.read_rows(args.csv) if r["name"] == args.name]
    if args.summary or args.seeds:
        print(json.dumps({"summary": summary(rows), "quick_targets": quick_targets(rows)},
                         indent=1))
    if not (args.seeds or args.summary):
        p.error("give --seeds or --summary")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
