"""PNG plots of a run, drawn from its metrics.jsonl."""
from __future__ import annotations

import json
import os


def plot_training_curves(workdir: str) -> str:
    """Loss and its two terms against the step, and the kNN monitor's accuracy where it ran
    -> workdir/training_curves.png; returns the path."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    monitor_rows = [r for r in rows if "monitor_knn_top1" in r]
    panels = 3 + bool(monitor_rows)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2))
    steps = [r["step"] for r in train_rows]
    for ax, key, title in zip(axes, ("loss", "on_diag", "off_diag"),
                              ("loss", "invariance term  sum (1 - C_ii)^2",
                               "redundancy term  sum_{i!=j} C_ij^2")):
        ax.plot(steps, [r[key] for r in train_rows])
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
    path = os.path.join(workdir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
