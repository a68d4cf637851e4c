"""What experiments/ablations.py makes of finished runs: the noise floor of the seed sweep,
each row's delta and its verdict against the paper, and the CSV, markdown table and plot of
a sweep."""
from __future__ import annotations

import csv
import math
import os
import statistics
import textwrap
from typing import Optional

from ablation_paper import PAPER_BASELINE, PAPER_NOTES
from ablation_sweeps import SCALES, Run


CSV_FIELDS = ("sweep", "run", "setting", "x", "status", "runs", "per_run", "linear_top1",
              "linear_top5", "knn_top1", "knn_top5", "online_top1", "effective_rank",
              "final_loss", "steps", "seconds", "paper_top1", "paper_delta", "paper_expect",
              "delta_linear", "delta_knn", "threshold_linear", "threshold_knn", "vs_noise",
              "vs_noise_knn", "verdict_linear", "verdict_knn", "paper_agreement")
NOISE_Z = 2.0       # beyond noise: |delta| > NOISE_Z * std * sqrt(1 / n_row + 1 / n_ref)
PAPER_FLAT = 1.0    # the paper's rows within this many points of its baseline count as flat
PROBES = ("linear", "knn")
_MEAN_FIELDS = ("linear_top1", "linear_top5", "knn_top1", "knn_top5", "online_top1",
                "effective_rank", "final_loss")


def noise_threshold(std: float, n_row: int, n_ref: int) -> float:
    """Beyond-noise threshold (points) of the difference between the mean of n_row runs
    and the mean of n_ref runs, each run with seed standard deviation `std`: NOISE_Z x the
    difference's standard deviation, std x sqrt(1 / n_row + 1 / n_ref). One run against
    the 3 seeds' mean: sqrt(4/3); one run against one: sqrt(2); 3 runs against 3:
    sqrt(2/3)."""
    return NOISE_Z * std * math.sqrt(1 / n_row + 1 / n_ref)


def mean_row(rows: list[dict]) -> dict:
    """One table row from the runs of one setting (its seeds): the mean of each accuracy
    over the finished runs, their wall times summed, `runs` their number and `per_run`
    each one's linear/kNN top-1. With no finished run, the first run's row as it is."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return {**rows[0], "runs": 0, "per_run": ""}
    out = dict(done[0]) if rows[0]["status"] == "done" else {**done[0], "run": rows[0]["run"]}
    for key in _MEAN_FIELDS:
        values = [float(r[key]) for r in done if r.get(key, "") != ""]
        out[key] = round(statistics.mean(values), 2) if values else ""
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds", "") != ""]
    out.update(runs=len(done), seconds=round(sum(seconds)) if seconds else "",
               per_run=" ".join(f"{r['linear_top1']}/{r['knn_top1']}" for r in done))
    return out


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
        floor[f"{key}_threshold"] = noise_threshold(floor[f"{key}_std"], 1, len(done))
    return floor


def paper_expectation(paper: Optional[float], base_paper: Optional[float],
                      expect: Optional[str]) -> Optional[str]:
    """"lower" | "flat" | "higher" against the paper's baseline: from the row's paper number
    where it moves PAPER_FLAT points or more; within that, the direction the paper's text
    states for it (`expect`, e.g. Table 6's "slightly decrease" for stop-gradient's -0.9),
    else flat; with no number, the stated claim; None where it makes none."""
    if paper is not None and base_paper is not None:
        delta = paper - base_paper
        if abs(delta) >= PAPER_FLAT:
            return "lower" if delta < 0 else "higher"
        return expect or "flat"
    return expect


# A change of the paper's at least this many times our beyond-noise threshold should show
# here; where ours is flat, that row disagrees rather than being "within noise".
VISIBLE_FACTOR = 3.0
# The verdict of a row whose setting is not the paper's (Run.not_comparable): its change
# is measured and shown, but not held against the paper's number.
NOT_COMPARABLE = "not comparable"


def agreement(ours: Optional[str], paper: Optional[str], paper_delta: Optional[float] = None,
              threshold: Optional[float] = None) -> str:
    """One probe's verdict: ours and the paper's "lower" | "flat" | "higher" (ours "flat" =
    within noise; None = no noise floor yet / no claim). paper_delta: the paper's change in
    points (linear top-1, the only probe it reports), threshold: this probe's beyond-noise
    threshold; a flat result against a paper change of VISIBLE_FACTOR x threshold or more
    disagrees."""
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


def two_probe_verdict(linear: str, knn: str) -> str:
    """The row's verdict from its two probes' verdicts (each `agreement`'s): the same
    verdict where they agree; "mixed" where one agrees with the paper and the other
    disagrees; where one cannot tell ("within noise") the other decides, since a probe that
    cannot resolve the paper's change is evidence neither way. "no claim" and "noise
    unknown" pass through, and so does NOT_COMPARABLE."""
    for passthrough in ("no claim", "noise unknown", NOT_COMPARABLE):
        if passthrough in (linear, knn):
            return passthrough
    if linear == knn:
        return linear
    pair = {linear, knn}
    if pair == {"agrees", "disagrees"}:
        return "mixed"
    return "agrees" if "agrees" in pair else "disagrees"


def direction(delta: float, threshold: float) -> str:
    """"flat" (|delta| <= threshold), "higher" or "lower"."""
    return "flat" if abs(delta) <= threshold else "higher" if delta > 0 else "lower"


def annotate(rows: list[dict], runs: list[Run], floor: Optional[dict]) -> list[dict]:
    """Adds each trained row's change against its reference on both probes, whether each
    is beyond noise, the paper's expectation, each probe's verdict and the row's
    (`two_probe_verdict`). A row is the mean of its `runs` finished runs (1 unless it was
    repeated with other seeds). The reference is the run's `control` row when it names one
    (the mean of that row's runs), else the mean over the seed sweep's runs when the noise
    floor exists, else the seed-0 baseline run; the threshold is `noise_threshold` of the
    seed std for the two means' run counts. A run whose setting is not the paper's
    (Run.not_comparable) gets NOT_COMPARABLE on both probes and the row. Reference rows
    pass through unchanged."""
    by_name = {r.name: r for r in runs}
    by_row = {r["run"]: r for r in rows}
    base = by_row.get("baseline")
    base_paper = _num(base["paper_top1"]) if base else PAPER_BASELINE
    seeds_mean = {k: (floor[f"{k}_mean"] if floor else
                      (_num(base[f"{k}_top1"]) if base and base["status"] == "done" else None))
                  for k in PROBES}
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
        ref, n_ref = seeds_mean, floor["n"] if floor else None
        if run.control:
            control = by_row.get(run.control, {})
            ref = {k: (_num(control[f"{k}_top1"]) if control.get("status") == "done"
                       else None) for k in PROBES}
            n_ref = int(control.get("runs") or 1)
        if row["status"] != "done" or ref["linear"] is None:
            out.append(row)
            continue
        n_row = int(row.get("runs") or 1)
        verdicts = {}
        for k, noise_col in zip(PROBES, ("vs_noise", "vs_noise_knn")):
            d = float(row[f"{k}_top1"]) - ref[k]
            row[f"delta_{k}"] = round(d, 2)
            threshold = (noise_threshold(floor[f"{k}_std"], n_row, n_ref) if floor else None)
            ours = None if threshold is None else direction(d, threshold)
            if ours is not None:
                row[f"threshold_{k}"] = round(threshold, 2)
                row[noise_col] = "within" if ours == "flat" else "beyond"
            verdicts[k] = (NOT_COMPARABLE if run.not_comparable else
                           agreement(ours, expect, delta, threshold))
        if row["run"] != "baseline":
            row["verdict_linear"], row["verdict_knn"] = verdicts["linear"], verdicts["knn"]
            row["paper_agreement"] = two_probe_verdict(verdicts["linear"], verdicts["knn"])
        out.append(row)
    return out


def replace_block(path: str, name: str, text: str, append: bool = True) -> bool:
    """Puts `text` between the <!-- NAME --> and <!-- end NAME --> lines of the markdown
    file at `path` (replacing what was there; appended at the end where the markers are
    missing and `append`). Returns whether the file was written."""
    start, end = f"<!-- {name} -->", f"<!-- end {name} -->"
    page = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in page and end in page:
        page = page[:page.index(start)] + block + page[page.index(end) + len(end):]
    elif append:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    else:
        return False
    with open(path + ".tmp", "w") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return True


BORDERLINE_FACTOR = 1.5   # |delta| within this factor of its threshold: more seeds decide


def is_borderline(row: dict) -> bool:
    """An annotated row whose verdict one run cannot settle: on either probe its |delta|
    lies within BORDERLINE_FACTOR of that probe's threshold (threshold / 1.5 <= |delta| <=
    1.5 x threshold), or its two-probe verdict differs from its linear probe's alone."""
    if row.get("paper_agreement", "") in ("", "no claim", "noise unknown", NOT_COMPARABLE):
        return False
    if row["paper_agreement"] != row["verdict_linear"]:
        return True
    return any(row[f"threshold_{k}"] / BORDERLINE_FACTOR <= abs(float(row[f"delta_{k}"]))
               <= BORDERLINE_FACTOR * row[f"threshold_{k}"] for k in PROBES)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _num(v) -> Optional[float]:
    return None if v in ("", None) else float(v)


def noise_text(floor: Optional[dict]) -> str:
    """The table's noise-floor line and the verdict rule."""
    if floor is None:
        return ("Noise floor: not yet measured (the seed sweep at this scale has fewer than 2 "
                "finished seeds); changes are against the seed-0 baseline run.")
    return (f"Noise floor (seed sweep, {floor['n']} seeds): linear "
            f"{floor['linear_mean']:.2f} ± {floor['linear_std']:.2f}, kNN "
            f"{floor['knn_mean']:.2f} ± {floor['knn_std']:.2f} (mean ± std). Changes are "
            f"against the seeds' mean (or the row's named control); a change is beyond "
            f"noise when larger than {NOISE_Z:g} x std x sqrt(1/n_row + 1/n_ref), for one "
            f"run against the seeds' mean {floor['linear_threshold']:.2f} points linear and "
            f"{floor['knn_threshold']:.2f} kNN; `runs` is n_row. Each probe's verdict: "
            f"agrees (same direction beyond noise, or both flat), disagrees (the other "
            f"direction, a change where the paper saw none, or none where the paper's "
            f"exceeds {VISIBLE_FACTOR:g}x that probe's threshold), within noise (the paper "
            f"saw a smaller change of {PAPER_FLAT:g}+ points, or stated one without a "
            "number, and this probe cannot tell it from seed noise), no claim. The row's "
            "verdict: the probes' shared verdict; mixed where one agrees and the other "
            "disagrees; where one is within noise, the other's; not comparable where the "
            "row's setting is not the paper's.")


def markdown_table(sweep: str, rows: list[dict], *, scale_name: str, command: str,
                   floor: Optional[dict] = None, compact: bool = False) -> str:
    """The sweep's table: ours (linear, kNN, their changes, beyond noise or not) beside the
    paper's top-1, its change and the verdict; rows as annotated by `annotate`. compact:
    without the title, the scale's description and the noise-floor text (for a page that
    states them once: docs/ablations.md)."""
    head = [] if compact else [f"### Ablation: {sweep} ({scale_name} scale)", "",
                               SCALES[scale_name].description, "",
                               PAPER_NOTES[sweep], "", noise_text(floor), ""]
    lines = head + ([PAPER_NOTES[sweep], ""] if compact else []) + [
             f"Command: `{command}`", "",
             "| setting | runs | linear top-1 | kNN top-1 | Δ linear | Δ kNN "
             "| vs noise (linear / kNN) | effective rank | paper top-1 | paper Δ "
             "| linear / kNN verdict | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
        noise = " / ".join(v for v in (r.get("vs_noise", ""), r.get("vs_noise_knn", "")) if v)
        probes = " / ".join(v for v in (r.get("verdict_linear", ""), r.get("verdict_knn", ""))
                            if v)
        n_runs = ("" if r["status"] == "reference" else
                  str(r["runs"]) if r.get("runs", "") != "" else "1")
        lines.append(f"| {r['setting']} | {n_runs} | {lin_txt} | {knn_txt} | {d_lin_txt} "
                     f"| {d_knn_txt} | {noise} | {rank} | {paper_txt} | {paper_delta} "
                     f"| {probes} | {r.get('paper_agreement', '')} |")
    seconds = [float(r["seconds"]) for r in rows if r["seconds"] != ""]
    n_runs = sum(int(r.get("runs") or 1) for r in rows if r["status"] != "reference")
    lines += ["", f"{n_runs} runs, {sum(seconds) / 60:.1f} min of training and evaluation "
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
