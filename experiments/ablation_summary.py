"""The ablation summary, generated from a scale's sweep CSVs so that it cannot drift from
them: every finished row the paper makes a claim about, in one category, with its changes
beside the paper's. docs/ablations.md holds the full list and README.md a compact one,
each between <!-- ablation summary --> markers (ablation_report.replace_block);
`python experiments/ablations.py --sweep all --report-only --references` rewrites both.

A row's category reads its two-probe verdict (ablation_report.two_probe_verdict) and, for a
row that agrees, the size of its change: the paper reports linear top-1 only, so the size
compared is the linear probe's change against the paper's, within the row's own linear
beyond-noise threshold (its `threshold_linear`).
"""
from __future__ import annotations

import csv
import os
import textwrap
from typing import Optional

from ablation_sweeps import SCALES, SWEEPS, Run, sweep_runs

# (key, title, what puts a row there), in the summary's order.
CATEGORIES = (
    ("reproduces", "Reproduces",
     "the paper's direction and a linear change within the row's noise threshold of the "
     "paper's, or both flat"),
    ("larger", "Same direction, larger",
     "the paper's direction, by more than the paper's change plus the row's threshold"),
    ("smaller", "Same direction, smaller",
     "the paper's direction, by less than the paper's change minus the row's threshold"),
    ("no number", "Same direction, no number to compare",
     "the paper's direction; the paper's text gives the row no number, only a figure or "
     "the direction"),
    ("preliminary", "Consistent with a claim the paper calls preliminary",
     "both flat, against a claim the paper states without results, \"not shown\""),
    ("within noise", "Within noise",
     "the paper's change is smaller than this scale can tell from seed noise"),
    ("mixed", "Mixed", "one probe agrees with the paper and the other disagrees"),
    ("disagrees", "Disagrees",
     "the other direction, a change where the paper saw none, or none where the paper's "
     "change is over 3x the threshold"),
    ("not comparable", "Not comparable",
     "the row's setting is not the paper's, so its number is not held against the paper's"),
    ("not finished", "Did not finish", "the run stopped before its probes"),
)
TITLES = {key: title for key, title, _ in CATEGORIES}


def _num(v) -> Optional[float]:
    return None if v in ("", None) else float(v)


def size_category(row: dict) -> str:
    """"reproduces" | "larger" | "smaller" | "no number" for an annotated row whose verdict
    is "agrees": a flat claim reproduces (both flat); otherwise the linear change against
    the paper's (`paper_delta`), within `threshold_linear` of it or not."""
    if row["paper_expect"] == "flat":
        return "reproduces"
    paper = _num(row.get("paper_delta"))
    if paper is None:
        return "no number"
    ours, threshold = float(row["delta_linear"]), float(row["threshold_linear"])
    if abs(ours - paper) <= threshold:
        return "reproduces"
    return "larger" if abs(ours) > abs(paper) else "smaller"


def row_category(row: dict, run: Optional[Run]) -> Optional[str]:
    """The summary category of one annotated row (a key of CATEGORIES), or None for a row
    the summary leaves out: a reference, the baseline, or a row the paper makes no claim
    about. run: the row's Run (for the paper's hedge), where it is known."""
    if row["status"] == "reference" or row["run"] == "baseline":
        return None
    if row["status"] != "done":
        return "not finished" if row.get("paper_expect") else None
    verdict = row.get("paper_agreement", "")
    if verdict in ("", "no claim", "noise unknown"):
        return None
    if verdict != "agrees":
        return verdict
    if run is not None and run.hedge:
        return "preliminary"
    return size_category(row)


def read_scale_rows(results_dir: str, sweeps: tuple = SWEEPS) -> list[dict]:
    """The rows of every sweep CSV in results_dir, in SWEEPS order, each run once (the
    baseline and shared rows appear in several sweeps)."""
    rows, seen = [], set()
    for sweep in sweeps:
        path = os.path.join(results_dir, f"{sweep}.csv")
        if not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["run"] not in seen:
                    seen.add(row["run"])
                    rows.append(row)
    return rows


def categorise(rows: list[dict], scale_name: str) -> dict[str, list[dict]]:
    """{category: [rows]} over CATEGORIES (empty lists kept), and "no claim": the finished
    rows the paper makes no claim about."""
    runs = {r.name: r for sweep in SWEEPS for r in sweep_runs(sweep, SCALES[scale_name])}
    out = {key: [] for key, _, _ in CATEGORIES}
    out["no claim"] = []
    for row in rows:
        key = row_category(row, runs.get(row["run"]))
        if key is not None:
            out[key].append(row)
        elif row.get("paper_agreement") == "no claim":
            out["no claim"].append(row)
    return out


def short_label(row: dict) -> str:
    """The row's setting without its parenthesis ("stop-gradient, 3x as long")."""
    return row["setting"].split(" (")[0]


def entry(row: dict) -> str:
    """One row in the full summary: its setting, run count, changes and the paper's."""
    runs = int(row.get("runs") or 1)
    paper = _num(row.get("paper_delta"))
    claim = (f"paper {paper:+.1f}" if paper is not None else
             f"paper: {row['paper_expect']}, no number" if row.get("paper_expect") else
             "no claim")
    if row["status"] != "done":
        return f"{row['setting']}: {row['status']} ({claim})"
    return (f"{row['setting']}: {_points(row['delta_linear'])} linear / "
            f"{_points(row['delta_knn'])} kNN, {claim}; {runs} run{'s' * (runs > 1)}")


def _points(value) -> str:
    """A change in points, one decimal, signed; no "-0.0"."""
    v = round(float(value), 1)
    return f"{v + 0.0:+.1f}"


def full_summary(groups: dict[str, list[dict]], command: str) -> str:
    """The docs page's summary: every category with its definition and its rows (an empty
    category says "none"), then the rows with no claim."""
    lines = [_wrapped(f"Generated from the sweep CSVs by `{command}`. Changes are top-1 "
                      "points against the row's reference (the seeds' mean, or its named "
                      "control); the paper's are ImageNet linear top-1 after 300 epochs. A "
                      "row of several runs is their mean.", ""), ""]
    for key, title, rule in CATEGORIES:
        rows = groups[key]
        lines.append(_wrapped(f"- **{title}** ({rule}): " + (
            "none." if not rows else f"{len(rows)} row{'s' * (len(rows) > 1)}.")))
        lines += [_wrapped(f"  - {entry(r)}", "    ") for r in rows]
    if groups["no claim"]:
        lines.append(_wrapped("- **No claim in the paper** (measured for reference): "
                              + "; ".join(short_label(r) for r in groups["no claim"]) + "."))
    return "\n".join(lines) + "\n"


def _wrapped(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, width=92, subsequent_indent=indent, break_on_hyphens=False)


def compact_summary(groups: dict[str, list[dict]]) -> str:
    """The README's summary: each non-empty category's rows by their short labels."""
    parts = [f"**{TITLES[key]}:** " + "; ".join(short_label(r) for r in groups[key]) + "."
             for key, _, _ in CATEGORIES if groups[key]]
    return textwrap.fill(" ".join(parts), width=92, break_on_hyphens=False) + "\n"
