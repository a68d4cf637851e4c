"""training_curves.png: a run's metrics.jsonl drawn so that it reads without the code.

One panel for the loss, one per scalar the objective names (`Objective.curves`), and,
where the run has them, one of the accuracies measured while it trained: the online
probe's top-1 on each logged training batch and the kNN monitor's top-1 on the
evaluation split. A curve of fewer than MARKERS_BELOW points is drawn with markers, and a
curve of one point says so in its panel (a run shorter than log_every_steps).
"""
from __future__ import annotations

import json
import math
from typing import Optional

from bt_jax.io import run_dir, storage
from bt_jax import losses

# Curves with fewer points than this get a marker at each point.
MARKERS_BELOW = 20
ACCURACY_TITLE = "accuracy while training"


def read_rows(workdir: str) -> list[dict]:
    """The rows of workdir/metrics.jsonl, oldest first (unreadable lines left out)."""
    rows = []
    for line in storage.read_text(run_dir.path(workdir, run_dir.METRICS)).splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def series(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """(steps, values): `key` of every row that has it (finite values only), times scale."""
    points = [(r["step"], scale * float(r[key])) for r in rows
              if key in r and math.isfinite(float(r[key]))]
    return [s for s, _ in points], [v for _, v in points]


def panels(rows: list[dict], curves: tuple, eval_split: str = "evaluation") -> list[dict]:
    """What training_curves.png draws, panel by panel, left to right:
    {"title", "ylabel", "log": log y axis, "lines": [(label, steps, values)]}: the loss,
    each of `curves` ((metrics key, title), ...), then ACCURACY_TITLE where the rows hold
    the online probe's "probe_top1" or the kNN monitor's "monitor_knn_top1" (in %, the
    monitor's on the `eval_split` split)."""
    out = []
    for key, title in (("loss", "loss"),) + tuple(curves):
        steps, values = series(rows, key)
        log = bool(values) and min(values) > 0
        out.append({"title": title, "ylabel": f"{key} (log scale)" if log else key, "log": log,
                    "lines": [(key, steps, values)]})
    accuracy = [(label, *series(rows, key, 100.0)) for key, label in (
        ("probe_top1", "online probe, on each logged training batch"),
        ("monitor_knn_top1", f"kNN monitor, on the {eval_split} split"))]
    accuracy = [line for line in accuracy if line[1]]
    if accuracy:
        out.append({"title": ACCURACY_TITLE, "ylabel": "top-1 accuracy (%)", "log": False,
                    "lines": accuracy})
    return out


def training_curves_figure(rows: list[dict], curves: tuple, title: str = "",
                           eval_split: str = "evaluation"):
    """The matplotlib Figure of `panels(rows, curves, eval_split)`, with `title` above
    them; every panel's step axis starts at 0."""
    from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
    plt = _pyplot()
    specs = panels(rows, curves, eval_split)
    last_step = max([r["step"] for r in rows if "step" in r] or [1])
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.4), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        for label, steps, values in spec["lines"]:
            ax.plot(steps, values, label=label,
                    marker="o" if len(steps) < MARKERS_BELOW else None, markersize=4)
        points = max(len(steps) for _, steps, _ in spec["lines"])
        if points == 0:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center",
                    transform=ax.transAxes)
        elif points == 1:
            ax.text(0.5, 0.92, f"one logged step (step {spec['lines'][0][1][0]})",
                    ha="center", va="top", fontsize=8, transform=ax.transAxes)
        if spec["log"]:
            ax.set_yscale("log")
        ax.set_title(spec["title"], fontsize=9)
        ax.set_xlabel("step")
        ax.set_xlim(0, 1.05 * last_step)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(spec["ylabel"], fontsize=8)
        ax.grid(alpha=0.3)
        if spec["title"] == ACCURACY_TITLE:
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curves(workdir: str, curves: Optional[tuple] = None, title: str = "",
                         eval_split: str = "evaluation") -> str:
    """workdir/metrics.jsonl -> workdir/training_curves.png (`training_curves_figure`);
    curves: the objective's (default: Barlow Twins' two terms). Returns the path."""
    if curves is None:
        curves = losses.OBJECTIVES["barlow_twins"].curves
    fig = training_curves_figure(read_rows(workdir), curves, title, eval_split)
    path = run_dir.path(workdir, run_dir.TRAINING_CURVES)
    storage.write_figure(fig, path)
    _pyplot().close(fig)
    return path


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt
