"""PNG plots of a run, drawn from its metrics.jsonl."""
from __future__ import annotations

import json
import os


def plot_training_curves(workdir: str) -> str:
    """Loss and its two terms against the step -> workdir/training_curves.png; returns the path."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("loss", "on_diag", "off_diag"),
                              ("loss", "invariance term  sum (1 - C_ii)^2",
                               "redundancy term  sum_{i!=j} C_ij^2")):
        ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    path = os.path.join(workdir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
