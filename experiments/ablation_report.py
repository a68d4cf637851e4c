"""What experiments/ablations.py makes of finished runs: the noise floor of the seed sweep,
each row's delta and its verdict against the paper, and the CSV, markdown table and plot of
a sweep."""
from __future__ import annotations

import csv
import math
import statistics
import textwrap
from typing import Optional

from ablation_sweeps import PAPER_BASELINE, PAPER_NOTES, SCALES, Run


CSV_FIELDS = ("sweep", "run", "setting", "x", "status", "linear_top1", "linear_top5",
              "knn_top1", "knn_top5", "online_top1", "effective_rank", "final_loss", "steps",
              "seconds", "paper_top1", "paper_delta", "paper_expect", "delta_linear",
              "delta_knn", "vs_noise", "paper_agreement")
NOISE_Z = 2.0       # beyond noise: |delta| > NOISE_Z * std * sqrt(1 + 1/n)
PAPER_FLAT = 1.0    # the paper's rows within this many points of its baseline count as flat


def noise_floor(seed_rows: list[dict]) -> Optional[dict]:
    """The seed sweep's spread over its finished rows: {"n", "linear_mean", "linear_std",
    "linear_threshold", "knn_mean", "knn_std", "knn_threshold"} (points), or None with
    fewer than 2 finished seeds. A threshold is NOISE_Z standard deviations of one run's
    difference from the mean of the n seeds: NOISE_Z * std * sqrt(1 + 1/n)."""
    done = [r for r in seed_rows if r["status"] == "done"]
    if len(done) < 2:
        return None
    floor = {"n": len(done)}
    for key in ("linear", "knn"):
        values = [float(r[f"{key}_top1"]) for r in done]
        floor[f"{key}_mean"] = statistics.mean(values)
        floor[f"{key}_std"] = statistics.stdev(values)
        floor[f"{key}_threshold"] = (NOISE_Z * floor[f"{key}_std"]
                                     * math.sqrt(1 + 1 / len(done)))
    return floor


def paper_expectation(paper: Optional[float], base_paper: Optional[float],
                      expect: Optional[str]) -> Optional[str]:
    """"lower" | "flat" | "higher" against the paper's baseline, from the row's paper number
    (within PAPER_FLAT points: flat) or else its stated claim; None where it makes none."""
    if paper is not None and base_paper is not None:
        delta = paper - base_paper
        return "lower" if delta <= -PAPER_FLAT else "higher" if delta >= PAPER_FLAT else "flat"
    return expect


# A change of the paper's at least this many times our beyond-noise threshold should show
# here; where ours is flat, that row disagrees rather than being "within noise".
VISIBLE_FACTOR = 3.0


def agreement(ours: Optional[str], paper: Optional[str], paper_delta: Optional[float] = None,
              threshold: Optional[float] = None) -> str:
    """The paper column: ours and the paper's "lower" | "flat" | "higher" (ours "flat" =
    within noise; None = no noise floor yet / no claim). paper_delta: the paper's change in
    points, threshold: our beyond-noise threshold; a flat result against a paper change of
    VISIBLE_FACTOR x threshold or more disagrees."""
    if paper is None:
        return "no claim"
    if ours is None:
        return "noise unknown"
    if ours == "flat":
        if paper == "flat":
            return "agrees"
        visible = (paper_delta is not None and threshold is not None
                   and abs(paper_delta) >= VISIBLE_FACTOR * threshold)
        return "disagrees" if visible else "within noise"
    return "agrees" if ours == paper else "disagrees"


def annotate(rows: list[dict], runs: list[Run], floor: Optional[dict]) -> list[dict]:
    """Adds each trained row's change against its reference, whether it is beyond noise,
    the paper's expectation and the verdict. The reference is the run's `control` row when
    it names one (one run against another: the threshold is NOISE_Z x std x sqrt(2)), else
    the mean over the seeds when the noise floor exists, else the seed-0 baseline run.
    Reference rows pass through unchanged."""
    by_name = {r.name: r for r in runs}
    by_row = {r["run"]: r for r in rows}
    base = by_row.get("baseline")
    base_paper = _num(base["paper_top1"]) if base else PAPER_BASELINE
    seeds_mean = {k: (floor[f"{k}_mean"] if floor else
                      (_num(base[f"{k}_top1"]) if base and base["status"] == "done" else None))
                  for k in ("linear", "knn")}
    out = []
    for row in rows:
        row = dict(row)
        run = by_name.get(row["run"])
        if run is None or row["status"] == "reference":
            out.append(row)
            continue
        ref_paper = run.paper_ref if run.paper_ref is not None else base_paper
        paper, delta = _num(row["paper_top1"]), None
        if paper is not None and ref_paper is not None and row["run"] != "baseline":
            delta = paper - ref_paper
            row["paper_delta"] = round(delta, 2)
        expect = (None if row["run"] == "baseline" else
                  paper_expectation(paper, ref_paper, run.expect))
        row["paper_expect"] = expect or ""
        ref, threshold = seeds_mean, floor["linear_threshold"] if floor else None
        if run.control:
            control = by_row.get(run.control, {})
            ref = {k: (_num(control[f"{k}_top1"]) if control.get("status") == "done"
                       else None) for k in ("linear", "knn")}
            threshold = NOISE_Z * floor["linear_std"] * math.sqrt(2) if floor else None
        if row["status"] == "done" and ref["linear"] is not None:
            d_lin = float(row["linear_top1"]) - ref["linear"]
            row["delta_linear"] = round(d_lin, 2)
            row["delta_knn"] = round(float(row["knn_top1"]) - ref["knn"], 2)
            ours = None
            if threshold is not None:
                ours = ("flat" if abs(d_lin) <= threshold
                        else "higher" if d_lin > 0 else "lower")
                row["vs_noise"] = "within" if ours == "flat" else "beyond"
            if row["run"] != "baseline":
                row["paper_agreement"] = agreement(ours, expect, delta, threshold)
        out.append(row)
    return out


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _num(v) -> Optional[float]:
    return None if v in ("", None) else float(v)


def noise_text(floor: Optional[dict]) -> str:
    """The table's noise-floor line."""
    if floor is None:
        return ("Noise floor: not yet measured (the seed sweep at this scale has fewer than 2 "
                "finished seeds); changes are against the seed-0 baseline run.")
    return (f"Noise floor (seed sweep, {floor['n']} seeds): linear "
            f"{floor['linear_mean']:.2f} ± {floor['linear_std']:.2f}, kNN "
            f"{floor['knn_mean']:.2f} ± {floor['knn_std']:.2f} (mean ± std). Changes are "
            f"against the seeds' mean; a linear change is beyond noise when larger than "
            f"{floor['linear_threshold']:.2f} points ({NOISE_Z:g} x std x sqrt(1 + 1/n); kNN: "
            f"{floor['knn_threshold']:.2f}). Paper column: agrees (same direction beyond "
            f"noise, or both flat), disagrees (the other direction, a change where the paper "
            f"saw none, or none where the paper's exceeds "
            f"{VISIBLE_FACTOR * floor['linear_threshold']:.1f} points), within noise (the "
            f"paper saw a smaller change of {PAPER_FLAT:g}+ points, or stated one without a "
            "number, and this scale cannot tell it from seed noise), no claim.")


def markdown_table(sweep: str, rows: list[dict], *, scale_name: str, command: str,
                   floor: Optional[dict] = None) -> str:
    """The sweep's table: ours (linear, kNN, their changes, beyond noise or not) beside the
    paper's top-1, its change and the verdict; rows as annotated by `annotate`."""
    lines = [f"### Ablation: {sweep} ({scale_name} scale)", "",
             SCALES[scale_name].description, "", PAPER_NOTES[sweep], "",
             noise_text(floor), "",
             f"Command: `{command}`", "",
             "| setting | linear top-1 | kNN top-1 | Δ linear | Δ kNN | vs noise "
             "| effective rank | paper top-1 | paper Δ | paper |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lin, knn, paper = _num(r["linear_top1"]), _num(r["knn_top1"]), _num(r["paper_top1"])
        if r["status"] not in ("done", "reference"):
            lin_txt = knn_txt = r["status"]
        else:
            lin_txt, knn_txt = f"{lin:.1f}", f"{knn:.1f}"
        d_lin, d_knn = _num(r.get("delta_linear")), _num(r.get("delta_knn"))
        d_lin_txt = "" if d_lin is None else f"{d_lin:+.1f}"
        d_knn_txt = "" if d_knn is None else f"{d_knn:+.1f}"
        paper_txt = "—" if paper is None else f"{paper:.1f}"
        d_paper = _num(r.get("paper_delta"))
        paper_delta = "—" if d_paper is None else f"{d_paper:+.1f}"
        rank = "" if r["effective_rank"] == "" else f"{float(r['effective_rank']):.1f}"
        lines.append(f"| {r['setting']} | {lin_txt} | {knn_txt} | {d_lin_txt} | {d_knn_txt} "
                     f"| {r.get('vs_noise', '')} | {rank} | {paper_txt} | {paper_delta} "
                     f"| {r.get('paper_agreement', '')} |")
    seconds = [float(r["seconds"]) for r in rows if r["seconds"] != ""]
    runs = [r for r in rows if r["status"] != "reference"]
    lines += ["", f"{len(runs)} runs, {sum(seconds) / 60:.1f} min of training and evaluation "
              "in all (each run's own wall time, summed; a run shared with another sweep "
              "counts in both)."]
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: str, rows: list[dict], path: str, floor: Optional[dict] = None) -> None:
    """Linear and kNN top-1 per setting (bars), or against the swept value (lines, log x),
    with the paper's numbers where it reports them; error bars (bars) or bands (lines) of
    one seed standard deviation where the noise floor is known. The legend sits outside
    the axes, clear of the data."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    refs = [r for r in rows if r["status"] == "reference"]
    rows = [r for r in rows if r["status"] != "reference"]
    many = len(rows) > 8     # e.g. the follow-ups: a wider figure, short upright labels
    fig, ax = plt.subplots(figsize=(4 + 1.2 * len(rows) if many else 10, 4.4))
    for r, colour in zip(refs, ("grey", "black")):
        ax.axhline(_num(r["linear_top1"]), color=colour, lw=0.8, ls="-.",
                   label=r["setting"].replace("reference: ", "") + " (linear)")
    lin = [_num(r["linear_top1"]) if r["status"] == "done" else None for r in rows]
    knn = [_num(r["knn_top1"]) if r["status"] == "done" else None for r in rows]
    paper = [_num(r["paper_top1"]) for r in rows]
    std = {"lin": floor["linear_std"] if floor else None,
           "knn": floor["knn_std"] if floor else None, "paper": None}
    series = ((lin, "ours: linear", "lin"), (knn, "ours: kNN", "knn"),
              (paper, "paper: ImageNet linear", "paper"))
    if sweep == "seed":   # the paper's baseline is not a function of our seed
        series = series[:2]
    xs = [_num(r["x"]) for r in rows]
    if all(x is not None for x in xs):
        order = sorted(range(len(rows)), key=lambda i: xs[i])
        for (values, label, key), style in zip(series, ("o-", "s--", "^:")):
            pts = [(xs[i], values[i]) for i in order if values[i] is not None]
            if pts:
                px, py = (np.array(v) for v in zip(*pts))
                line, = ax.plot(px, py, style, label=label)
                if std[key]:
                    ax.fill_between(px, py - std[key], py + std[key], color=line.get_color(),
                                    alpha=0.15, lw=0, label=f"{label} ± 1 seed std")
        if sweep in ("projector_width", "batch_size"):
            ax.set_xscale("log", base=2)
        elif sweep == "lambda":
            ax.set_xscale("log", base=10)
        if all(float(x).is_integer() for x in xs):   # seeds, depths, widths, batch sizes
            ax.set_xticks(sorted(set(xs)))
            ax.set_xticklabels([f"{x:g}" for x in sorted(set(xs))])
            ax.minorticks_off()
        ax.set_xlabel(sweep.replace("_", " "))
    else:
        pos = np.arange(len(rows))
        width = 0.27
        for k, (values, label, key) in enumerate(series):
            err = ([std[key] if v is not None else 0 for v in values] if std[key] else None)
            if err and key != "paper":
                err = [e if r["status"] == "done" else 0 for e, r in zip(err, rows)]
            ax.bar(pos + (k - 1) * width, [v if v is not None else 0 for v in values], width,
                   yerr=err, capsize=2 if err else 0,
                   label=label + (" (± 1 seed std)" if err else ""))
        for i, r in enumerate(rows):
            if r["status"] != "done":     # a failed or missing run: say so, not an empty slot
                ax.text(pos[i] - width / 2, 2, "run " + r["status"], rotation=90, ha="center",
                        va="bottom", fontsize=8, color="crimson")
        ax.set_xticks(pos)
        if many:    # the table names each row's control; the plot keeps the setting
            ax.set_xticklabels([textwrap.fill(r["setting"].split(" (")[0], 16) for r in rows],
                               fontsize=7)
        else:
            ax.set_xticklabels([r["setting"].replace(" (", "\n(") for r in rows], fontsize=7,
                               rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Barlow Twins ablation: {sweep.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
