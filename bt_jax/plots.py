"""PNG plots of a run, drawn from its metrics.jsonl."""
from __future__ import annotations

import json
from typing import Optional

from bt_jax.io import run_dir, storage
from bt_jax import losses


def plot_training_curves(workdir: str, curves: Optional[tuple] = None) -> str:
    """The loss and the objective's scalars `curves` ((metrics key, title), ...; default:
    Barlow Twins' two terms) against the step, and the kNN monitor's accuracy where it ran
    -> workdir/training_curves.png; returns the path."""
    if curves is None:
        curves = losses.OBJECTIVES["barlow_twins"].curves
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    rows = [json.loads(line) for line in
            storage.read_text(run_dir.path(workdir, run_dir.METRICS)).splitlines()
            if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    monitor_rows = [r for r in rows if "monitor_knn_top1" in r]
    curves = (("loss", "loss"),) + tuple(curves)
    panels = len(curves) + bool(monitor_rows)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    axes = axes[0]
    steps = [r["step"] for r in train_rows]
    for ax, (key, title) in zip(axes, curves):
        ax.plot(steps, [r.get(key, float("nan")) for r in train_rows])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    if monitor_rows:
        ax = axes[-1]
        ax.plot([r["step"] for r in monitor_rows],
                [100 * r["monitor_knn_top1"] for r in monitor_rows], marker="o")
        ax.set_title("kNN monitor: top-1 (%)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir.path(workdir, "training_curves.png")
    storage.write_figure(fig, path)
    plt.close(fig)
    return path
