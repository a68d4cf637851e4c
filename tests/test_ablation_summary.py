"""The ablation verdicts and their summary: "not comparable" is a verdict, a row reproduces
the paper only where the size holds too, and the summaries in README.md and
docs/ablations.md are those of the committed CSVs, which are those of the committed
ledger under the current rule."""
import filecmp
import os
import re
import shutil

from test_experiments import ROOT, _ablations, _floor, _row

SMALL_SWEEPS = ("loss", "asymmetric", "lambda", "projector_width", "projector_depth",
                "batch_size", "augmentations", "redundancy", "projector_init", "seed",
                "followup")
TINY_SWEEPS = ("loss", "asymmetric", "lambda", "projector_width", "projector_depth",
               "batch_size", "augmentations", "redundancy", "seed")


def _summary():
    _ablations()
    import ablation_summary  # pylint: disable=import-outside-toplevel
    return ablation_summary


def _annotated(ab, sweep, rows):
    """The rows annotated against the small scale's runs of `sweep`, each labelled with its
    run's setting."""
    runs = ab.sweep_runs(sweep, ab.SCALES["small"])
    settings = {r.name: r.setting for r in runs}
    rows = [{**r, "setting": settings[r["run"]]} for r in rows]
    return {r["run"]: r for r in ab.annotate(rows, runs, _floor())}


def test_info_nce_is_not_comparable_with_the_papers_cross_entropy():
    """bt_jax's info_nce is SimCLR's loss, not Table 5's cross-entropy over C: its rows get
    the verdict "not comparable" on both probes, whatever their change."""
    ab = _ablations()
    rows = _annotated(ab, "loss", [_row(ab, "baseline", 87.0, 83.0, 71.4),
                                   _row(ab, "info_nce", 89.0, 85.0, 63.3),
                                   _row(ab, "invariance_only", 80.0, 70.0, 57.3)])
    nce = rows["info_nce"]
    assert (nce["verdict_linear"], nce["verdict_knn"], nce["paper_agreement"]) == (
        "not comparable",) * 3
    assert nce["delta_linear"] == 2.0 and nce["paper_delta"] == -8.1   # still measured
    assert rows["invariance_only"]["paper_agreement"] == "agrees"
    assert not ab.is_borderline({**nce, "delta_linear": 0.9})
    assert ab.two_probe_verdict("not comparable", "not comparable") == "not comparable"
    for sweep in ("loss", "followup"):
        for scale in ("small", "tiny", "paper"):
            marked = {r.name for r in ab.sweep_runs(sweep, ab.SCALES[scale])
                      if r.not_comparable}
            assert marked == {r.name for r in ab.sweep_runs(sweep, ab.SCALES[scale])
                              if r.overrides.get("loss.kind") == "info_nce"}, (sweep, scale)


def test_a_row_reproduces_only_where_the_size_holds_too():
    """An agreeing row reproduces where its linear change lies within its threshold of the
    paper's; else it is "same direction, larger" or "smaller"; a claim without a number
    cannot be sized; a flat claim met by a flat row reproduces."""
    summary = _summary()

    def agreeing(delta, paper, threshold=0.83, expect="lower"):
        return {"paper_expect": expect, "paper_delta": paper, "delta_linear": delta,
                "threshold_linear": threshold}
    assert summary.size_category(agreeing(-1.5, -0.9, 0.58)) == "larger"      # 0.6 > 0.58
    assert summary.size_category(agreeing(-1.25, -0.9, 0.58)) == "reproduces"
    assert summary.size_category(agreeing(-10.1, -1.2)) == "larger"
    assert summary.size_category(agreeing(-5.5, -14.1)) == "smaller"
    assert summary.size_category(agreeing(-9.1, -10.1)) == "smaller"          # 1.0 > 0.83
    assert summary.size_category(agreeing(-9.5, -10.1)) == "reproduces"
    assert summary.size_category(agreeing(-1.6, "")) == "no number"
    assert summary.size_category(agreeing(-0.2, "", expect="flat")) == "reproduces"
    assert summary.size_category(agreeing(2.0, 1.0, 0.58, "higher")) == "larger"


def test_the_summary_lists_every_category_that_has_a_row():
    """Rows annotated by the rule, categorised: a mixed row makes "Mixed" list it (never
    "none"), the hedged auto-correlation claim is not a reproduction, a failed run is
    listed, rows without a claim only in the docs' last line."""
    ab, summary = _ablations(), _summary()
    small = ab.SCALES["small"]
    runs = {r.name: r for s in ab.SWEEPS for r in ab.sweep_runs(s, small)}
    loss = _annotated(ab, "loss", [
        _row(ab, "baseline", 87.0, 83.0, 71.4),
        _row(ab, "invariance_only", 80.0, 70.0, 57.3),        # -7.0 vs -14.1: smaller
        _row(ab, "no_projector_bn", 86.5, 80.0, 71.2),        # linear flat, kNN down: mixed
        _row(ab, "info_nce", 87.2, 83.1, 63.3),
        {**_row(ab, "no_bn_no_norm", "", "", 53.4), "status": "failed"}])
    redundancy = _annotated(ab, "redundancy", [_row(ab, "baseline", 87.0, 83.0, 71.4),
                                               _row(ab, "redundancy_auto", 87.3, 83.0)])
    lam = _annotated(ab, "lambda", [_row(ab, "lambda_0.08", 74.0, 55.0)])
    rows = [r for r in (*loss.values(), *redundancy.values(), *lam.values())]
    assert loss["no_projector_bn"]["paper_agreement"] == "mixed"
    categories = {r["run"]: summary.row_category(r, runs[r["run"]]) for r in rows}
    assert categories == {"baseline": None, "invariance_only": "smaller",
                          "no_projector_bn": "mixed", "info_nce": "not comparable",
                          "no_bn_no_norm": "not finished", "redundancy_auto": "preliminary",
                          "lambda_0.08": None}
    groups = summary.categorise(rows, "small")
    full = "\n".join(" ".join(item.split())
                     for item in summary.full_summary(groups, "CMD").split("\n  -"))
    compact = " ".join(summary.compact_summary(groups).split())     # unwrapped
    assert "**Mixed:** no BN in the projector." in compact and "none" not in compact
    assert "**Reproduces:**" not in compact            # no row reproduces here
    assert "**Not comparable:** InfoNCE over the batch." in compact
    assert "- **Reproduces** (" in full and "none." in full
    assert re.search(r"\*\*Mixed\*\* \([^)]*\): 1 row\.", full)
    assert "\ninvariance term only (lambda 0): -7.0 linear / -13.0 kNN, paper -14.1; 1 run" \
        in full
    assert "- **No claim in the paper** (measured for reference): lambda 0.08." in full
    no_mixed = summary.full_summary(summary.categorise(list(redundancy.values()), "small"),
                                    "CMD")
    assert re.search(r"\*\*Mixed\*\* \([^)]*\): none\.", no_mixed)


def _block(path, name="ablation summary"):
    page = open(path).read()
    start, end = f"<!-- {name} -->\n", f"<!-- end {name} -->"
    assert start in page and end in page, path
    return page[page.index(start) + len(start):page.index(end)]


def test_the_committed_summaries_are_those_of_the_committed_csvs():
    ab, summary = _ablations(), _summary()
    groups = summary.categorise(
        summary.read_scale_rows(os.path.join(ROOT, "experiments", "results")), "small")
    assert _block(os.path.join(ROOT, "README.md")) == summary.compact_summary(groups)
    assert _block(os.path.join(ROOT, "docs", "ablations.md")) == summary.full_summary(
        groups, ab.SUMMARY_COMMAND)
    assert groups["mixed"] and groups["not comparable"]   # followup.csv has both


def test_the_committed_tables_are_the_ledgers_under_the_current_rule(tmp_path):
    """--report-only rebuilds every CSV, table and the docs page's summary from the
    committed ledger (runs.json) alone: what is committed is what the rule makes of it."""
    ab = _ablations()
    results = os.path.join(ROOT, "experiments", "results")
    for scale, sweeps, page in (("small", SMALL_SWEEPS, "ablations.md"),
                                ("tiny", TINY_SWEEPS, "ablations_tiny.md")):
        out = tmp_path / scale
        shutil.copytree(results, out / "results",
                        ignore=shutil.ignore_patterns("*.png", "paper"))
        shutil.copy(os.path.join(ROOT, "docs", page), out / page)
        assert ab.main(["--sweep", ",".join(sweeps), "--scale", scale, "--report-only",
                        "--references", "--results", str(out / "results"),
                        "--root", str(out / "no_workdirs"), "--docs", str(out / page)]) == 0
        sub = "" if scale == "small" else scale
        for sweep in sweeps:
            for ext in ("csv", "md"):
                name = os.path.join(sub, f"{sweep}.{ext}")
                assert filecmp.cmp(os.path.join(results, name), out / "results" / name,
                                   shallow=False), name
        assert filecmp.cmp(os.path.join(ROOT, "docs", page), out / page, shallow=False), page
