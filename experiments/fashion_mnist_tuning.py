"""Tuning log of the Fashion-MNIST recipes: every run on the validation split, one CSV row
each, and the accuracy-against-wall-time plot.

A run is `python -m bt_jax.main --config RECIPE --workdir ROOT/NAME` plus overrides, with
data.validation_examples=10000: pretraining and the probes use 50,000 training images and
the probes are scored on the 10,000 held out (never on the test split). Its wall time is
that of the whole command (start-up, compilation, training, evaluation), taken here.

    python experiments/fashion_mnist_tuning.py --run q01 --note "first try" \
        --set model.width=0.25 --set num_epochs=2
    python experiments/fashion_mnist_tuning.py --plot --chosen q07,f03

A finished run (results.json in its workdir) is not run again: its row is rebuilt from
its files; a killed one resumes from its checkpoint, and its wall time adds up. The
machine must be otherwise idle for the wall times to mean anything.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bt_jax.io.run_dir import read_json  # noqa: E402

CSV_PATH = os.path.join(ROOT, "experiments", "results", "fashion_mnist_tuning.csv")
PLOT_PATH = os.path.join(ROOT, "experiments", "results", "fashion_mnist_pareto.png")
VALIDATION_EXAMPLES = 10_000
FIELDS = ("run", "recipe", "overrides", "status", "wall_min", "train_pairs_per_s",
          "monitor_share", "val_linear_top1", "val_knn_top1", "pixels_linear_top1",
          "pixels_knn_top1", "random_linear_top1", "random_knn_top1", "note")


def command(recipe: str, workdir: str, overrides: list[str],
            validation_examples: int = VALIDATION_EXAMPLES) -> list[str]:
    """The training command of one tuning run (validation hold-out always on)."""
    return [sys.executable, "-m", "bt_jax.main", f"--config={recipe}", f"--workdir={workdir}",
            f"--config.data.validation_examples={validation_examples}",
            *[f"--config.{o}" for o in overrides]]


def run_metrics(workdir: str) -> dict:
    """{"train_pairs_per_s", "monitor_seconds"} from a run's metrics.jsonl: the median
    pairs/s of its logging intervals (the first, which holds compilation, left out) and the
    time of the monitor's calls before the last step (the last one's features are the
    end-of-run evaluation's, which would extract them anyway)."""
    rows = []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["pairs_per_s"] for r in rows if "pairs_per_s" in r][1:]
    last = max((r["step"] for r in rows), default=0)
    return {"train_pairs_per_s": statistics.median(rates) if rates else None,
            "monitor_seconds": sum(r.get("monitor_seconds", 0.0) for r in rows
                                   if r["step"] < last)}


def measured(workdir: str, seconds, split: str) -> dict:
    """A finished run's numbers from its workdir: status, wall minutes (of `seconds`, the
    timed command), median pairs/s, the monitor's share of the wall time, and the accuracy
    of Barlow Twins ("{split}_linear_top1", "{split}_knn_top1"), raw pixels and the
    random-init encoder in percent (None where absent)."""
    results = read_json(os.path.join(workdir, "results.json")) or {}
    base = results.get("baselines", {})
    m = run_metrics(workdir)

    def pct(r, key):
        return None if key not in r else round(100 * r[key], 2)

    return {"status": "done" if "knn_top1" in results else None,
            "wall_min": None if seconds is None else round(seconds / 60, 2),
            "train_pairs_per_s": None if m["train_pairs_per_s"] is None
            else round(m["train_pairs_per_s"], 1),
            "monitor_share": None if not seconds else round(m["monitor_seconds"] / seconds, 3),
            f"{split}_linear_top1": pct(results, "linear_top1"),
            f"{split}_knn_top1": pct(results, "knn_top1"),
            "pixels_linear_top1": pct(base.get("pixels", {}), "linear_top1"),
            "pixels_knn_top1": pct(base.get("pixels", {}), "knn_top1"),
            "random_linear_top1": pct(base.get("random_init", {}), "linear_top1"),
            "random_knn_top1": pct(base.get("random_init", {}), "knn_top1")}


def row_of(name: str, recipe: str, overrides: list[str], workdir: str, note: str) -> dict:
    """The CSV row of a run, from its workdir (results.json, metrics.jsonl, tuning.json)."""
    record = read_json(os.path.join(workdir, "tuning.json")) or {}
    numbers = measured(workdir, record.get("seconds"), "val")
    numbers["status"] = numbers["status"] or record.get("status", "todo")
    return {"run": name, "recipe": recipe, "overrides": " ".join(overrides), **numbers,
            "note": note}


def read_rows(path: str = CSV_PATH) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_row(row: dict, path: str = CSV_PATH, fields: tuple = FIELDS,
              key: tuple = ("run",)) -> None:
    """Adds the row, or replaces the row with the same values of `key`'s fields."""
    def ident(r):
        return tuple(str(r[k]) for k in key)

    rows = [r for r in read_rows(path) if ident(r) != ident(row)] + [row]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields}
                         for r in rows)
    os.replace(path + ".tmp", path)


def tune(name: str, recipe: str, overrides: list[str], root: str, note: str,
         validation_examples: int = VALIDATION_EXAMPLES, csv_path: str = CSV_PATH) -> dict:
    """Runs (or resumes, or skips when finished) one tuning run and logs its row."""
    workdir = os.path.join(root, name)
    os.makedirs(workdir, exist_ok=True)
    record_path = os.path.join(workdir, "tuning.json")
    record = read_json(record_path) or {"overrides": overrides, "seconds": 0.0}
    if record["overrides"] != overrides:
        raise SystemExit(f"error: {workdir!r} holds run {name!r} with other overrides "
                         f"({record['overrides']}); pick another --run name.")
    if "knn_top1" not in (read_json(os.path.join(workdir, "results.json")) or {}):
        cmd = command(recipe, workdir, overrides, validation_examples)
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        start = time.perf_counter()
        status = subprocess.call(cmd, cwd=ROOT)
        record["seconds"] += time.perf_counter() - start
        record["status"] = "done" if status == 0 else f"failed (exit {status})"
        with open(record_path, "w") as f:
            json.dump(record, f, indent=2)
    row = row_of(name, recipe, overrides, workdir, note)
    write_row(row, csv_path)
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict], chosen: list[str], path: str = PLOT_PATH) -> None:
    """Validation linear and kNN accuracy against wall minutes, one point per finished run,
    the chosen recipes ringed, the raw-pixel references as horizontal lines."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    done = [r for r in rows if r["val_linear_top1"] and r["wall_min"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "linear_top1", "linear probe (fast)"),
                           (axes[1], "knn_top1", "kNN (k=200)")):
        x = [float(r["wall_min"]) for r in done]
        y = [float(r[f"val_{key}"]) for r in done]
        ax.scatter(x, y, color="tab:blue", zorder=2)
        for r, xi, yi in zip(done, x, y):
            ax.annotate(r["run"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if r["run"] in chosen:
                ax.scatter([xi], [yi], s=220, facecolors="none", edgecolors="tab:red",
                           linewidths=2, zorder=3)
        pixels = [float(r[f"pixels_{key}"]) for r in rows if r.get(f"pixels_{key}")]
        if pixels:
            ax.axhline(pixels[-1], color="gray", ls="--", label=f"raw pixels {pixels[-1]:.1f}%")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("wall minutes (pretraining + evaluation, 2-core CPU)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"{title}; ringed: chosen recipes", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    """The CSV as a Markdown table (accuracies in percent, validation split)."""
    lines = ["| run | overrides of configs/fashion_mnist_quick.py | wall min | pairs/s (run) | "
             "val linear | val kNN | pixels linear / kNN | random init linear / kNN | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def pair(a, b):
            return f"{r[a]} / {r[b]}" if r.get(a) else "—"
        lines.append(f"| {r['run']} | `{r['overrides'] or '(none)'}` | {r['wall_min']} | "
                     f"{r['train_pairs_per_s']} | {r['val_linear_top1'] or '—'} | "
                     f"{r['val_knn_top1'] or '—'} | {pair('pixels_linear_top1', 'pixels_knn_top1')} | "
                     f"{pair('random_linear_top1', 'random_knn_top1')} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run name (its workdir is ROOT/NAME)")
    p.add_argument("--recipe", default="configs/fashion_mnist_quick.py")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override, repeatable")
    p.add_argument("--note", default="", help="why this run (kept in the CSV)")
    p.add_argument("--root", default=os.path.join(ROOT, "runs", "fmnist_tuning"))
    p.add_argument("--validation-examples", type=int, default=VALIDATION_EXAMPLES,
                   help="held-out training images the probes are scored on (never 0: "
                        "tuning never reads the test split)")
    p.add_argument("--csv", default=CSV_PATH)
    p.add_argument("--out", default=PLOT_PATH, help="the plot's path")
    p.add_argument("--plot", action="store_true", help="draw the plot from the CSV")
    p.add_argument("--chosen", default="", help="comma list of runs to ring in the plot")
    p.add_argument("--markdown", action="store_true", help="print the CSV as a Markdown table")
    args = p.parse_args(argv)
    if args.validation_examples <= 0:
        p.error("--validation-examples must be positive: tuning runs never read the test split")
    if args.run:
        tune(args.run, args.recipe, args.set, args.root, args.note, args.validation_examples,
             args.csv)
    if args.plot:
        plot(read_rows(args.csv), [c for c in args.chosen.split(",") if c], args.out)
    if args.markdown:
        print(markdown_table(read_rows(args.csv)))
    if not (args.run or args.plot or args.markdown):
        p.error("give --run NAME, --plot or --markdown")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
