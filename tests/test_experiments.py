"""The benchmarks and the ablation sweeps in experiments/ run (tiny sizes; the benchmarks'
numbers are not checked)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow    # 30 s to 100 s on 2 cores; `make test-slow` (and CI) runs it
def test_bench_augment_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "experiments/bench_augment.py", "--sizes", "16",
                        "--images", "16", "--batch", "8", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
                                PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    rows = json.load(open(out))["rows"]
    assert [(row["size"], row["path"]) for row in rows] == [(16, "host tf.data"),
                                                            (16, "device JAX")]
    assert all(row["pairs_per_s"] > 0 for row in rows)


@pytest.mark.slow    # 30 s to 100 s on 2 cores; `make test-slow` (and CI) runs it
def test_bench_input_runs_both_implementations_on_the_same_cores(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "experiments/bench_input.py", "--cores", "1",
                        "--sizes", "32,64", "--images", "8", "--batch", "4", "--repeats", "1",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
                                PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    result = json.load(open(out))
    impls = [(row["size"], row["impl"]) for row in result["rows"]]
    assert impls == [(32, "tf.data (bt_jax)"), (32, "PIL reference"), (32, "device path (cpu)"),
                     (64, "tf.data (bt_jax)"), (64, "PIL reference"), (64, "tf.data crops only"),
                     (64, "device path (cpu)")]
    assert all(row["views_per_s"] > 0 for row in result["rows"])
    assert [(q["size"], q["cores"]) for q in result["ratios"]] == [(32, 1), (64, 1)]


def _ablations():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "ablations", os.path.join(ROOT, "experiments", "ablations.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablations"] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_ablation_run_is_a_valid_config_at_both_scales():
    from bt_jax.config import validate
    ab = _ablations()
    for scale in ab.SCALES.values():
        for sweep in ab.SWEEPS:
            runs = ab.sweep_runs(sweep, scale)
            assert "baseline" in [r.name for r in runs], sweep
            assert len({r.name for r in runs}) == len(runs), sweep
            for run in runs:
                config = ab.run_config(scale.recipe, ab.run_overrides(scale, run, {}))
                validate(config)
                for key, value in run.overrides.items():   # the override really landed
                    node = config
                    for part in key.split("."):
                        node = node[part]
                    assert node == value or tuple(node) == tuple(value), (sweep, run.name, key)


def test_ablation_runs_switch_the_intended_fields():
    ab = _ablations()
    small = ab.SCALES["tiny"]
    loss = {r.name: r for r in ab.sweep_runs("loss", small)}
    assert loss["redundancy_only"].overrides == {"loss.invariance_weight": 0.0}
    assert loss["invariance_only"].overrides == {"loss.lambd": 0.0}
    assert loss["no_bn_no_norm"].overrides == {"model.projector_bn": False,
                                               "loss.normalization": "none"}
    assert loss["redundancy_only"].paper == 0.1 and loss["baseline"].paper == 71.4
    batch = ab.sweep_runs("batch_size", small)
    pairs = {r.x: ab.run_overrides(small, r, {})["num_steps"]
             * ab.run_overrides(small, r, {}).get("batch_size", 256) for r in batch}
    assert len(set(pairs.values())) == 1, pairs     # every batch size sees the same pairs
    crop_only = ab.run_overrides(small, ab.sweep_runs("augmentations", small)[-1], {})
    assert crop_only["data.augment.blur_prob"] == (0.0, 0.0)
    assert crop_only["data.augment.jitter_prob"] == 0.0
    with pytest.raises(SystemExit, match="unknown config field"):
        ab.run_config(small.recipe, {"loss.lamda": 0.1})
    with pytest.raises(SystemExit, match="eval.knn_k is now eval.knn.k"):
        ab.run_config(small.recipe, {"eval.knn_k": 5})


def test_small_scale_is_the_quick_recipe_and_every_batch_size_trains_one_epoch():
    ab = _ablations()
    small = ab.SCALES["small"]
    assert small.recipe == "configs/fashion_mnist_quick.py"
    quick = ab.recipe(small.recipe)
    for run in ab.sweep_runs("batch_size", small):
        config = ab.run_config(small.recipe, ab.run_overrides(small, run, {}))
        assert config.num_epochs == 1 and config.num_steps == quick.num_steps, run.name
        assert config.eval.baselines is False    # the references are probed once, apart
    widths = {r.x: r for r in ab.sweep_runs("projector_width", small)}
    assert widths[1024].name == "baseline" and widths[256].expect == "lower"
    assert widths[4096].expect == "higher"
    depths = {r.x: r.name for r in ab.sweep_runs("projector_depth", small)}
    assert depths[2] == "baseline"              # the quick recipe's projector: 1024-1024
    lambdas = {r.x: r for r in ab.sweep_runs("lambda", small)}
    assert lambdas[0.0051].name == "baseline" and lambdas[0.02].expect == "flat"
    assert lambdas[0.08].expect is None


def test_noise_floor_marks_changes_and_states_the_papers_verdict():
    ab = _ablations()
    seeds = [{"status": "done", "linear_top1": v, "knn_top1": k}
             for v, k in (("87.0", "83.0"), ("87.4", "83.6"), ("86.6", "82.4"))]
    floor = ab.noise_floor(seeds)
    lin = np.array([87.0, 87.4, 86.6])
    assert floor["n"] == 3 and abs(floor["linear_mean"] - lin.mean()) < 1e-9
    assert abs(floor["linear_std"] - lin.std(ddof=1)) < 1e-9
    assert abs(floor["linear_threshold"] - 2 * lin.std(ddof=1) * np.sqrt(4 / 3)) < 1e-9
    assert ab.noise_floor(seeds[:1]) is None and ab.noise_floor(
        [dict(seeds[0]), {**seeds[1], "status": "failed"}]) is None
    # The paper's direction: from its number (1 point or more) or its stated claim.
    assert ab.paper_expectation(57.3, 71.4, None) == "lower"
    assert ab.paper_expectation(70.5, 71.4, None) == "flat"
    assert ab.paper_expectation(71.7, 70.7, None) == "higher"
    assert ab.paper_expectation(None, 71.4, "flat") == "flat"
    assert ab.paper_expectation(None, 71.4, None) is None
    assert ab.agreement("lower", "lower") == "agrees"
    assert ab.agreement("flat", "flat") == "agrees"
    assert ab.agreement("flat", "lower") == "within noise"
    assert ab.agreement("higher", "lower") == "disagrees"
    assert ab.agreement("lower", "flat") == "disagrees"
    assert ab.agreement("flat", "lower", -1.6, 0.83) == "within noise"
    assert ab.agreement("flat", "lower", -8.1, 0.83) == "disagrees"   # 8.1 >= 3 x 0.83
    assert ab.agreement("flat", "lower", None, 0.83) == "within noise"   # a claim, no number
    assert ab.agreement("lower", None) == "no claim"
    assert ab.agreement(None, "lower") == "noise unknown"
    runs = ab.sweep_runs("loss", ab.SCALES["small"])

    def row(name, lin, knn, paper=""):
        return {**{f: "" for f in ab.CSV_FIELDS}, "run": name, "setting": name,
                "status": "done", "linear_top1": lin, "knn_top1": knn, "paper_top1": paper}
    rows = ab.annotate([row("baseline", 87.0, 83.0, 71.4),
                        row("invariance_only", 80.0, 70.0, 57.3),      # far lower: agrees
                        row("no_projector_bn", 86.5, 83.0, 71.2),      # paper flat, ours flat
                        row("feature_norm", 86.5, 82.0, 69.8),         # paper -1.6: within noise
                        row("info_nce", 89.0, 85.0, 63.3),      # not the paper's loss
                        row("redundancy_only", 87.2, 83.0, 0.1)], runs, floor)  # flat vs -71
    by = {r["run"]: r for r in rows}
    assert by["invariance_only"]["delta_linear"] == -7.0 and by["invariance_only"][
        "vs_noise"] == "beyond"
    assert [by[n]["paper_agreement"] for n in ("invariance_only", "no_projector_bn",
                                               "feature_norm", "info_nce",
                                               "redundancy_only")] == [
        "agrees", "agrees", "within noise", "not comparable", "disagrees"]
    assert by["baseline"]["paper_agreement"] == "" and by["baseline"]["vs_noise"] == "within"
    table = ab.markdown_table("loss", rows, scale_name="small", command="CMD", floor=floor)
    assert "Noise floor (seed sweep, 3 seeds): linear 87.00 ± 0.40" in table
    assert "| invariance_only | 1 | 80.0 | 70.0 | -7.0 | -13.0 | beyond / beyond |" in table
    assert "| -14.1 | agrees / agrees | agrees |" in table
    # Without a noise floor the changes are against the seed-0 baseline, with no verdict
    # beyond "noise unknown".
    bare = {r["run"]: r for r in ab.annotate(rows[:2], runs, None)}
    assert bare["invariance_only"]["delta_linear"] == -7.0
    assert bare["invariance_only"]["paper_agreement"] == "noise unknown"
    assert "not yet measured" in ab.noise_text(None)


def test_a_follow_up_is_measured_against_its_own_control():
    ab = _ablations()
    runs = {r.name: r for r in ab.sweep_runs("followup", ab.SCALES["small"])}
    assert runs["no_projector_bn_lr10"].control == "baseline_lr10"
    assert runs["info_nce_width_4096"].control == "width_4096_lambda_scaled"
    assert runs["width_4096_lambda_scaled"].overrides["loss.lambd"] == 0.00127  # 0.0051/4
    assert (runs["info_nce_width_4096"].overrides["model.projector_dims"]
            == ab.sweep_runs("projector_width", ab.SCALES["small"])[-1].overrides[
                "model.projector_dims"])
    small = ab.SCALES["small"]
    longer = ab.run_overrides(small, runs["predictor_3x"], {})
    assert (longer["num_epochs"], longer["optim.warmup_epochs"]) == (3, 0.3)  # a tenth, as 1x
    assert longer["model.predictor_dims"] == (1024, 1024)
    assert runs["predictor_3x"].control == runs["info_nce_3x"].control == "baseline_3x"
    assert runs["lambda_0.02_3x"].control == "baseline_3x"
    assert ab.run_overrides(small, runs["lambda_0.02_3x"], {})["loss.lambd"] == 0.02
    same_steps = ab.run_overrides(small, runs["batch_512_same_steps"], {})  # 234 steps of 512
    assert (same_steps["batch_size"], same_steps["num_epochs"],
            same_steps["optim.warmup_epochs"]) == (512, 2, 0.2)
    # The paper's text gives no number at 512 or 256, only "almost unaffected for a batch as
    # small as 256" (Sec. 4): no change expected, and no number compared.
    assert (runs["batch_512_same_steps"].paper, runs["batch_512_same_steps"].paper_ref,
            runs["batch_512_same_steps"].expect) == (None, None, "flat")
    paper = {r.name: r for r in ab.sweep_runs("followup", ab.SCALES["paper"])}
    for name, epochs in (("baseline_3x", 900), ("batch_4096_same_steps", 600)):  # of 300
        assert ab.run_overrides(ab.SCALES["paper"], paper[name], {})["num_epochs"] == epochs
    tiny = ab.run_overrides(ab.SCALES["tiny"], ab.sweep_runs("followup", ab.SCALES["tiny"])[-1],
                            {})
    assert (tiny["num_steps"], tiny["optim.warmup_epochs"]) == (360, 0.15)
    floor = {"n": 3, "linear_mean": 87.0, "linear_std": 0.4, "linear_threshold": 0.92,
             "knn_mean": 83.0, "knn_std": 0.5, "knn_threshold": 1.15}

    def row(name, lin, knn, paper=""):
        return {**{f: "" for f in ab.CSV_FIELDS}, "run": name, "setting": name,
                "status": "done", "linear_top1": lin, "knn_top1": knn, "paper_top1": paper}
    rows = {r["run"]: r for r in ab.annotate(
        [row("baseline", 87.0, 83.0, 71.4), row("baseline_lr10", 85.0, 80.0),
         row("no_projector_bn_lr10", 84.5, 80.0, 71.2),
         row("batch_512_same_steps", 86.8, 82.5)], list(runs.values()), floor)}
    assert rows["batch_512_same_steps"]["paper_delta"] == ""
    assert rows["batch_512_same_steps"]["paper_agreement"] == "agrees"   # both flat
    assert rows["no_projector_bn_lr10"]["paper_delta"] == -0.2        # 71.2 - 71.4
    assert rows["baseline_lr10"]["delta_linear"] == -2.0          # against the seeds' mean
    assert rows["baseline_lr10"]["paper_agreement"] == "no claim"
    # -0.5 against its control (not -2.5 against the seeds): within 2 x 0.4 x sqrt(2).
    assert rows["no_projector_bn_lr10"]["delta_linear"] == -0.5
    assert rows["no_projector_bn_lr10"]["vs_noise"] == "within"
    assert rows["no_projector_bn_lr10"]["paper_agreement"] == "agrees"   # both flat


def _floor():
    return {"n": 3, "linear_mean": 87.0, "linear_std": 0.4, "linear_threshold": 0.92,
            "knn_mean": 83.0, "knn_std": 0.6, "knn_threshold": 1.39}


def _row(ab, name, lin, knn, paper="", runs=""):
    return {**{f: "" for f in ab.CSV_FIELDS}, "run": name, "setting": name, "status": "done",
            "linear_top1": lin, "knn_top1": knn, "paper_top1": paper, "runs": runs}


def test_the_verdict_reads_both_probes():
    """A row that agrees with the paper on the linear probe and disagrees on kNN is mixed;
    a probe that cannot resolve the paper's change leaves the verdict to the other."""
    ab = _ablations()
    assert ab.two_probe_verdict("agrees", "agrees") == "agrees"
    assert ab.two_probe_verdict("agrees", "disagrees") == "mixed"
    assert ab.two_probe_verdict("disagrees", "agrees") == "mixed"
    assert ab.two_probe_verdict("agrees", "within noise") == "agrees"
    assert ab.two_probe_verdict("within noise", "disagrees") == "disagrees"
    assert ab.two_probe_verdict("within noise", "within noise") == "within noise"
    assert ab.two_probe_verdict("no claim", "no claim") == "no claim"
    assert ab.two_probe_verdict("noise unknown", "noise unknown") == "noise unknown"
    runs = ab.sweep_runs("loss", ab.SCALES["small"])
    floor = _floor()
    # no_projector_bn: the paper is flat (71.2 against 71.4, "barely affected"). Linear
    # -0.5 is within its 0.92 threshold (agrees), kNN -3.0 is beyond its 2 x 0.6 x
    # sqrt(4/3) = 1.39 (disagrees): mixed, where the linear probe alone said "agrees".
    rows = {r["run"]: r for r in ab.annotate(
        [_row(ab, "baseline", 87.0, 83.0, 71.4), _row(ab, "no_projector_bn", 86.5, 80.0, 71.2),
         _row(ab, "invariance_only", 80.0, 82.5, 57.3)], runs, floor)}
    bn = rows["no_projector_bn"]
    assert (bn["vs_noise"], bn["vs_noise_knn"]) == ("within", "beyond")
    assert (bn["verdict_linear"], bn["verdict_knn"], bn["paper_agreement"]) == (
        "agrees", "disagrees", "mixed")
    assert abs(bn["threshold_knn"] - 2 * 0.6 * np.sqrt(4 / 3)) < 0.01
    assert ab.is_borderline(bn)                   # the kNN probe changed the verdict
    # invariance_only: linear far lower (agrees); kNN flat against the paper's -14.1,
    # which is over 3x its threshold: kNN disagrees, so the row is mixed.
    inv = rows["invariance_only"]
    assert (inv["verdict_linear"], inv["verdict_knn"], inv["paper_agreement"]) == (
        "agrees", "disagrees", "mixed")
    table = ab.markdown_table("loss", list(rows.values()), scale_name="small", command="CMD",
                              floor=floor)
    assert "| within / beyond | " in table and "| agrees / disagrees | mixed |" in table


def test_repeated_rows_are_the_mean_of_three_seeds_with_the_noise_of_two_means(tmp_path):
    ab = _ablations()
    small = ab.SCALES["small"]
    runs = {r.name: r for r in ab.sweep_runs("loss", small)}
    assert runs["feature_norm"].repeats == 3 and runs["invariance_only"].repeats == 1
    assert [r.repeats for r in ab.sweep_runs("seed", small)] == [1, 1, 1]
    assert all(r.repeats == 1 for r in ab.sweep_runs("loss", ab.SCALES["tiny"]))
    names = [(r.name, r.overrides) for r in ab.repeat_runs(runs["feature_norm"])]
    assert names == [("feature_norm", {"loss.normalization": "feature"}),
                     ("feature_norm_seed1", {"loss.normalization": "feature", "seed": 1}),
                     ("feature_norm_seed2", {"loss.normalization": "feature", "seed": 2})]
    base3 = ab.repeat_runs(dataclasses.replace(runs["baseline"], repeats=3))
    assert [(r.name, r.overrides) for r in base3[1:]] == [("seed_1", {"seed": 1}),
                                                          ("seed_2", {"seed": 2})]
    # Every repeated row's control is repeated too: both sides are means of 3.
    for sweep in ab.SWEEPS:
        rows = {r.name: r for r in ab.sweep_runs(sweep, small)}
        for r in rows.values():
            if r.repeats > 1 and r.control:
                assert rows[r.control].repeats == r.repeats, (sweep, r.name)
    # The threshold of a 3-run mean against another: 2 x std x sqrt(1/3 + 1/3).
    assert abs(ab.noise_threshold(0.4, 3, 3) - 2 * 0.4 * np.sqrt(2 / 3)) < 1e-12
    assert abs(ab.noise_threshold(0.4, 1, 3) - 2 * 0.4 * np.sqrt(4 / 3)) < 1e-12
    mean = ab.mean_row([{**_row(ab, "x", 86.0, 82.0), "seconds": 10},
                        {**_row(ab, "x_seed1", 87.0, 83.0), "seconds": 20},
                        {**_row(ab, "x_seed2", 88.5, 83.5), "seconds": 30}])
    assert (mean["run"], mean["runs"], mean["linear_top1"], mean["knn_top1"],
            mean["seconds"]) == ("x", 3, 87.17, 82.83, 60)
    assert mean["per_run"] == "86.0/82.0 87.0/83.0 88.5/83.5"
    assert ab.mean_row([{**_row(ab, "x", "", ""), "status": "todo"}])["runs"] == 0
    # report() on workdirs: the seed sweep gives the floor, feature_norm's three runs its
    # row; its -0.9 beside the paper's -1.6 is beyond the 3-run threshold 0.65 (one run
    # against the seeds' mean: 0.92, within).
    root = tmp_path / "runs"
    for name, lin, knn in (("baseline", 0.870, 0.830), ("seed_1", 0.874, 0.836),
                           ("seed_2", 0.866, 0.824), ("feature_norm", 0.862, 0.822),
                           ("feature_norm_seed1", 0.858, 0.820),
                           ("feature_norm_seed2", 0.863, 0.824)):
        work = root / "small" / name
        work.mkdir(parents=True)
        (work / "results.json").write_text(json.dumps({"linear_top1": lin, "linear_top5": 0.99,
                                                       "knn_top1": knn, "knn_top5": 0.99}))
    rows, floor = ab.report("loss", list(runs.values()), "small", str(root),
                            str(tmp_path / "res"), "CMD")
    fn = {r["run"]: r for r in rows}["feature_norm"]
    assert fn["runs"] == 3 and fn["linear_top1"] == 86.1 and fn["delta_linear"] == -0.9
    assert abs(fn["threshold_linear"] - 2 * floor["linear_std"] * np.sqrt(1 / 3 + 1 / 3)) < 0.01
    assert fn["vs_noise"] == "beyond" and fn["verdict_linear"] == "agrees"
    assert "| normalisation along the feature dim | 3 | 86.1 |" in (
        tmp_path / "res" / "loss.md").read_text()
    ledger = json.loads((tmp_path / "res" / "runs.json").read_text())
    assert ledger["feature_norm_seed2"]["overrides"]["seed"] == 2


def test_borderline_rows_are_those_near_a_threshold_or_flipped_by_knn():
    ab = _ablations()
    base = {"paper_agreement": "within noise", "verdict_linear": "within noise",
            "threshold_linear": 0.83, "threshold_knn": 1.2}
    assert ab.is_borderline({**base, "delta_linear": -0.67, "delta_knn": -0.3})  # 0.83 / 1.5
    assert ab.is_borderline({**base, "delta_linear": -0.1, "delta_knn": 1.75})   # < 1.8
    assert not ab.is_borderline({**base, "delta_linear": -0.5, "delta_knn": 0.7})
    assert not ab.is_borderline({**base, "paper_agreement": "agrees", "verdict_linear": "agrees",
                                 "delta_linear": -5.0, "delta_knn": -8.0})
    assert ab.is_borderline({**base, "paper_agreement": "mixed", "verdict_linear": "agrees",
                             "delta_linear": -5.0, "delta_knn": -8.0})
    assert not ab.is_borderline({**base, "paper_agreement": "no claim", "delta_linear": -0.8,
                                 "delta_knn": 0.0})


def test_paper_references_name_the_arxiv_tables_and_figures():
    """arXiv 2103.03230: Table 5 (loss), Table 6 (asymmetric), Fig. 2 (batch), Fig. 3
    (augmentations), Fig. 4 (projector width), Fig. 5 (lambda), Sec. 4's words on depth and
    Sec. 5.2's on the auto-correlation."""
    ab = _ablations()
    notes = ab.PAPER_NOTES
    for sweep, ref in (("loss", "Table 5"), ("asymmetric", "Table 6"), ("batch_size", "Fig. 2"),
                       ("augmentations", "Fig. 3"), ("projector_width", "Fig. 4"),
                       ("lambda", "Fig. 5"), ("projector_depth", "saturation of the "
                                                                "performance for 3 layers"),
                       ("redundancy", "Sec. 5.2")):
        assert ref in notes[sweep], sweep
    assert not any("Table 2" in n or "Table 4" in n for n in notes.values())
    small, paper = ab.SCALES["small"], ab.SCALES["paper"]
    batch = {r.x: r for r in ab.sweep_runs("batch_size", paper)}
    assert {b: r.paper for b, r in batch.items() if r.paper} == {1024: 71.7, 2048: 71.4}
    assert batch[128].expect is None and batch[256].expect == "flat"
    depth_small = {r.x: r.expect for r in ab.sweep_runs("projector_depth", small)}
    assert depth_small == {1: "lower", 2: None, 3: "higher", 4: "higher"}   # baseline depth 2
    depth_paper = {r.x: r.expect for r in ab.sweep_runs("projector_depth", paper)}
    assert depth_paper == {1: "lower", 2: "lower", 3: None, 4: "flat"}      # baseline depth 3
    asym = {r.name: r for r in ab.sweep_runs("asymmetric", small)}
    # Table 6's -0.9 is within the 1-point cut-off; the text says "slightly decrease".
    assert ab.paper_expectation(asym["stop_gradient"].paper, 71.4,
                                asym["stop_gradient"].expect) == "lower"
    assert ab.paper_expectation(71.2, 71.4, None) == "flat"
    aug = {r.name: ab.run_overrides(small, r, {}) for r in ab.sweep_runs("augmentations", small)}
    assert aug["aug_crop_blur"]["data.augment.blur_prob"] == (1.0, 0.1)   # the paper's blur
    assert aug["aug_crop_only"]["data.augment.blur_prob"] == (0.0, 0.0)
    assert {k: v for k, v in aug["aug_crop_blur"].items() if "blur" not in k} == {
        k: v for k, v in aug["aug_crop_only"].items() if "blur" not in k}


def test_paper_scale_budget_compiles_each_program_once_and_marks_what_does_not_fit(tmp_path):
    """ablation_budget over the paper scale's runs, with a stand-in for the compiler: runs
    that differ only in their length, seed, lambda or host augmentation share one compile;
    chip-hours are step seconds x steps x chips; a run that does not fit says what it needs;
    a second call compiles nothing (the cache)."""
    import ablation_budget as budget
    ab = _ablations()
    paper = ab.SCALES["paper"]
    entries = [(sweep, one.name, run.setting,
                ab.run_config(paper.recipe, ab.run_overrides(paper, one, {})))
               for sweep in ("loss", "batch_size", "augmentations", "followup")
               for run in ab.sweep_runs(sweep, paper) for one in ab.repeat_runs(run)]
    calls = []

    def fake_plan(config, topology, shape, devices_and_chip):
        calls.append(config.batch_size)
        fits = config.batch_size <= 2048
        return {"memory": {"fits": fits, "needed_bytes": config.batch_size * 2 ** 23,
                           "hbm_bytes": 16 * 2 ** 30},
                "estimate": {"step_seconds": 1e-4 * config.batch_size} if fits else None,
                "compile_seconds": 1.0, "run": {"num_devices": 16},
                "chip": {"name": "v5e"}}
    cache = tmp_path / "cache.json"
    chips_16 = ([object()] * 16, None)     # what fake_plan is handed: no libtpu needed

    def plan_budget(cache_path, **kwargs):
        return budget.plan_budget(entries, "v5e:4x4", str(cache_path), plan_fn=fake_plan,
                                  devices_and_chip=chips_16, progress=lambda *_: None, **kwargs)
    rows = plan_budget(cache)
    keys = {budget.program_key(c) for *_, c in entries}
    assert len(calls) == len(keys) < len(entries)
    by = {(r["sweep"], r["run"]): r for r in rows}
    base, longer = by[("loss", "baseline")], by[("followup", "baseline_3x")]
    lam = by[("loss", "invariance_only")]
    assert base["steps"] == 300 * (1_281_167 // 2048) and longer["steps"] == 3 * base["steps"]
    assert abs(base["chip_hours"] - 0.2048 * base["steps"] * 16 / 3600) < 1e-6
    assert lam["step_seconds"] == base["step_seconds"]          # lambda: one program
    assert by[("augmentations", "aug_crop_only")]["chip_hours"] == base["chip_hours"]
    big = by[("batch_size", "batch_4096")]
    assert (big["fits"], big["chip_hours"], big["needed_gib"], big["per_chip_batch"]) == (
        False, None, 32.0, 256)
    table = budget.budget_markdown(rows, "v5e:4x4", "v5e", "CMD")
    assert "| batch_size | batch_4096 | 4096 (256) | 32.00 of 16.00 GiB | no |" in table
    assert "does not fit" in table and "ESTIMATE" in table and "| all (each run once) |" in table
    calls.clear()
    assert plan_budget(cache) == rows and calls == []
    partial_cache = tmp_path / "partial.json"       # a budget spread over several calls
    calls.clear()
    part = plan_budget(partial_cache, max_compiles=2)
    assert len(calls) == 2
    done = [r for r in part if r["fits"] is not None]
    assert done and len(done) < len(part) and all(r["chip_hours"] is None
                                                   for r in part if r["fits"] is None)
    partial = budget.budget_markdown(part, "v5e:4x4", "v5e", "CMD")
    assert "**Incomplete:**" in partial and "not compiled" in partial
    assert "**Incomplete:**" not in table
    calls.clear()
    assert plan_budget(partial_cache) == rows
    assert len(calls) == len(keys) - 2                # the rest, not the first two again
    docs = tmp_path / "ablations.md"
    docs.write_text("# Ablations\n\ntext\n")
    ab.replace_block(str(docs), "budget v5e:4x4", table)
    ab.replace_block(str(docs), "budget v5e:4x4", table)      # replaced, not appended twice
    text = docs.read_text()
    assert text.startswith("# Ablations\n\ntext\n") and text.count("<!-- budget v5e:4x4 -->") == 1
    assert not ab.replace_block(str(docs), "table loss", "T", append=False)   # no markers
    with pytest.raises(SystemExit, match="topology"):
        ab.main(["--sweep", "loss", "--scale", "paper", "--plan", "v9:1x1"])


@pytest.mark.slow    # one real XLA:TPU compile of a tiny model: about 2 minutes on 2 cores
@pytest.mark.libtpu
def test_plan_flag_budgets_a_sweep_with_the_real_tpu_compiler(tmp_path, capsys):
    """`ablations.py --plan v5e:2x2` on the seed sweep at the tiny scale: its three runs
    (seeds) are one program, compiled once by libtpu; the budget lands in the CSV, the
    markdown and the docs file."""
    import csv
    ab = _ablations()
    docs = tmp_path / "ablations.md"
    docs.write_text("# Ablations\n")
    args = ["--sweep", "seed", "--scale", "tiny", "--plan", "v5e:2x2",
            "--results", str(tmp_path / "res"), "--docs", str(docs),
            "--set", "data.image_size=32", "--set", "model.stem=cifar",
            "--set", "model.projector_dims=(64, 64)", "--set", "monitor.online_probe=False",
            "--set", "batch_size=32", "--set", "num_steps=12"]
    assert ab.main(args) == 0
    assert capsys.readouterr().out.count("[budget] compiling") == 1
    with open(tmp_path / "res" / "tiny" / "budget_v5e_2x2.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["baseline", "seed_1", "seed_2"]
    for r in rows:
        assert r["fits"] == "True" and r["per_chip_batch"] == "8" and r["steps"] == "12"
        assert float(r["needed_gib"]) > 0 and float(r["hbm_gib"]) == 16.0
        assert float(r["chip_hours"]) == pytest.approx(float(r["step_seconds"]) * 12 * 4 / 3600)
    assert "<!-- budget v5e:2x2 -->" in docs.read_text()


def test_ablation_report_reads_seed_workdirs_and_draws_error_bars(tmp_path):
    """report() on finished workdirs (written here, no training): the seed sweep's runs give
    the noise floor of every table at that scale."""
    import csv
    ab = _ablations()
    root = tmp_path / "runs"
    for name, lin, knn in (("baseline", 0.870, 0.830), ("seed_1", 0.874, 0.836),
                           ("seed_2", 0.866, 0.824), ("redundancy_auto", 0.850, 0.800)):
        work = root / "small" / name
        work.mkdir(parents=True)
        (work / "results.json").write_text(json.dumps({"linear_top1": lin, "linear_top5": 0.99,
                                                       "knn_top1": knn, "knn_top5": 0.99}))
    runs = ab.sweep_runs("redundancy", ab.SCALES["small"])
    rows, floor = ab.report("redundancy", runs, "small", str(root), str(tmp_path / "res"),
                            "CMD")
    assert floor["n"] == 3
    with open(tmp_path / "res" / "redundancy.csv") as f:
        saved = {r["run"]: r for r in csv.DictReader(f)}
    assert saved["redundancy_auto"]["delta_linear"] == "-2.0"
    assert saved["redundancy_auto"]["vs_noise"] == "beyond"
    assert saved["redundancy_auto"]["paper_agreement"] == "disagrees"   # the paper: flat
    png = (tmp_path / "res" / "redundancy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Noise floor (seed sweep, 3 seeds)" in (tmp_path / "res" / "redundancy.md").read_text()


def test_the_ledger_keeps_finished_runs_once_their_workdirs_are_gone(tmp_path, capsys):
    """report() records every finished run (and the references) in RESULTS/runs.json; with
    the workdirs deleted, the tables come out the same and main() trains nothing."""
    import shutil
    ab = _ablations()
    root, res = tmp_path / "runs", tmp_path / "res"
    refs = {"pixels": {"linear_top1": 0.845, "linear_top5": 0.99, "knn_top1": 0.818,
                       "knn_top5": 0.99}}
    for name, lin, knn in (("baseline", 0.870, 0.830), ("seed_1", 0.874, 0.836),
                           ("seed_2", 0.866, 0.824), ("redundancy_auto", 0.850, 0.800)):
        work = root / "small" / name
        work.mkdir(parents=True)
        results = {"linear_top1": lin, "linear_top5": 0.99, "knn_top1": knn, "knn_top5": 0.99}
        if name == "baseline":
            results["baselines"] = refs
        (work / "results.json").write_text(json.dumps(results))
    runs = ab.sweep_runs("redundancy", ab.SCALES["small"])
    ab.report("redundancy", runs, "small", str(root), str(res), "CMD")
    first = (res / "redundancy.csv").read_text()
    ledger = json.loads((res / "runs.json").read_text())
    assert sorted(ledger) == ["baseline", "redundancy_auto", "seed_1", "seed_2"]
    assert ledger["seed_1"]["overrides"] == {"eval.baselines": False, "seed": 1}
    assert ledger["baseline"]["references"] == refs
    shutil.rmtree(root)
    ab.report("redundancy", runs, "small", str(root), str(res), "CMD")
    assert (res / "redundancy.csv").read_text() == first
    assert "| reference: raw pixels |  | 84.5 |" in (res / "redundancy.md").read_text()
    capsys.readouterr()
    assert ab.main(["--sweep", "redundancy", "--scale", "small", "--root", str(root),
                    "--results", str(res), "--references"]) == 0
    out = capsys.readouterr().out
    assert "redundancy/redundancy_auto: done (recorded in runs.json), skipped" in out
    assert not root.exists()                  # nothing trained, nothing evaluated
    assert (res / "redundancy.csv").read_text() == first
    # A run recorded with other overrides is not taken from the ledger.
    assert ab.ledger_entry(ledger, "seed_1", {"eval.baselines": False, "seed": 1})
    assert ab.ledger_entry(ledger, "seed_1", {"eval.baselines": False, "seed": 2}) is None
    assert ab.ledger_entry(ledger, "batch_128", {}) is None


def test_a_sweep_of_many_rows_gets_a_wider_plot(tmp_path):
    """The follow-ups' 13 runs do not fit the 10-inch figure: it widens with the rows
    (short upright labels) and the runs not yet trained still get their slots."""
    import struct
    ab = _ablations()
    runs = ab.sweep_runs("followup", ab.SCALES["small"])
    assert len(runs) > 8
    ab.report("followup", runs, "small", str(tmp_path / "runs"), str(tmp_path / "res"), "CMD")
    png = (tmp_path / "res" / "followup.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])     # the IHDR chunk
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and width >= 110 * (4 + 1.2 * len(runs)) - 2
    assert height < width / 3


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_tiny_sweep_end_to_end_writes_csv_table_and_plot_and_skips_finished_runs(tmp_path,
                                                                                 capsys):
    """Two runs (cross- and auto-correlation redundancy), 2 steps each, on digits."""
    import csv
    ab = _ablations()
    args = ["--sweep", "redundancy", "--scale", "tiny", "--root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"),
            "--set", "data.name=digits", "--set", "data.image_size=16",
            "--set", "model.projector_dims=(32, 32, 32)", "--set", "model.width=0.0625",
            "--set", "num_steps=2", "--set", "batch_size=32", "--set", "checkpoint.every_steps=1",
            "--set", "eval.probe_train_examples=300", "--set", "eval.knn.k=5",
            "--set", "eval.linear_fast.max_iter=10", "--set", "eval.linear_fast.l2_grid=(0.001,)",
            "--set", "monitor.online_probe=False"]
    assert ab.main(args) == 0
    with open(tmp_path / "results" / "tiny" / "redundancy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["baseline", "redundancy_auto"]
    for r in rows:
        assert r["status"] == "done" and r["steps"] == "2"
        # 10 classes: chance is 10%. Even a barely trained encoder's features separate the
        # digits (random init: 64% linear, 48% kNN in `make demo`); a probe fed shuffled
        # labels or another split's features would sit near chance.
        assert 30.0 <= float(r["linear_top1"]) <= 100.0, r
        assert 20.0 <= float(r["knn_top1"]) <= 100.0, r
    with open(tmp_path / "runs" / "tiny" / "baseline" / "results.json") as f:
        results = json.load(f)
    assert results["num_train"] == 300        # eval.probe_train_examples reached the probes
    assert abs(float(rows[0]["linear_top1"]) - 100 * results["linear_top1"]) < 0.01
    table = (tmp_path / "results" / "tiny" / "redundancy.md").read_text()
    assert "| cross-correlation (baseline) | " in table and "| 71.4 |" in table
    assert "--sweep redundancy --scale tiny" in table
    png = (tmp_path / "results" / "tiny" / "redundancy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # A rerun trains nothing: both runs are finished. --references adds the random-init
    # encoder and raw pixels, probed the same way, to the table.
    capsys.readouterr()
    assert ab.main(args + ["--references"]) == 0
    out = capsys.readouterr().out
    assert "redundancy/baseline: done, skipped" in out
    assert "redundancy/redundancy_auto: done, skipped" in out
    with open(tmp_path / "results" / "tiny" / "redundancy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["baseline", "redundancy_auto", "ref_random_init",
                                        "ref_pixels"]
    assert all(r["status"] == "reference" and float(r["linear_top1"]) > 10 for r in rows[2:])
    assert "| reference: raw pixels |" in (tmp_path / "results" / "tiny" / "redundancy.md").read_text()
    # Other overrides in the same workdirs are refused, not silently mixed in.
    with pytest.raises(SystemExit, match="other overrides"):
        ab.main(args[:-2] + ["--set", "monitor.online_probe=True"])


def _experiment(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow    # compiles a train step on 8 devices (about 40 s); `make test-slow` runs it
def test_benchmark_harness_measures_step_loss_and_augmentation(tmp_path):
    import csv
    bench = _experiment("benchmark")
    out = tmp_path / "bench.csv"
    assert bench.main(["--what", "step,loss,augment", "--preset", "tiny", "--n", "32",
                       "--d", "96", "--steps", "2", "--warmup", "0", "--augment", "device",
                       "--xla-defaults", "--conv-impl", "xla", "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["what"], r["impl"], r["path"]) for r in rows] == [
        ("train step", "bt_jax (JAX)", ""),
        ("train step", "bt_jax (JAX, conv_impl=xla)", ""),
        ("train step", "bt_jax (XLA default options)", ""),
        ("loss value+grad", "bt_jax (JAX)", "direct"), ("loss value+grad", "bt_jax (JAX)", "gram"),
        ("device augmentation", "bt_jax (JAX)", "")]
    step = rows[0]
    assert step["devices"] == "8" and step["batch"] == "16" and step["augment"] == "device"
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["compile_s"]) > 0
        assert float(r["flops_per_step"]) > 0 and float(r["achieved_tflops"]) > 0
        assert 0 < float(r["fraction_of_peak"])
        assert r["peak_source"].startswith("measured")
    assert float(step["pairs_per_s"]) > 0 and float(step["peak_memory_mb"]) > 0
    # XLA's FLOP count of the direct loss grows like N D^2, the Gram path's like N^2 D.
    assert float(rows[3]["flops_per_step"]) > float(rows[4]["flops_per_step"])
    # The loss sharded over the 8 devices: the same total FLOPs as on one device (the
    # per-device count times 8), and the ring-collective floats of each path.
    assert bench.main(["--what", "loss", "--n", "16,64", "--d", "16", "--steps", "1",
                       "--warmup", "0", "--loss-devices", "8", "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10                             # appended under one header
    sharded = rows[6:]
    assert [(r["n"], r["path"], r["devices"]) for r in sharded] == [
        ("16", "direct", "8"), ("16", "gram", "8"), ("64", "direct", "8"), ("64", "gram", "8")]
    assert [float(r["floats_moved"]) for r in sharded] == [
        bench.loss_floats_moved(n, 16, p, 8) for n in (16, 64) for p in ("direct", "gram")]
    assert bench.main(["--what", "loss", "--n", "16", "--d", "16", "--steps", "1",
                       "--warmup", "0", "--csv", str(out)]) == 0
    with open(out) as f:
        one = list(csv.DictReader(f))[-2:]
    for r1, r8 in zip(one, sharded[:2]):
        assert r1["devices"] == "1" and float(r1["floats_moved"]) == 0
        # Within 2x (collectives and per-device bookkeeping add a little at this tiny size);
        # the per-device count alone would be 8x too small.
        assert 0.5 < float(r8["flops_per_step"]) / float(r1["flops_per_step"]) < 2


def test_bench_conv_lists_every_distinct_layer_of_the_backbone():
    """ResNet-18 with the cifar_pool stem at 28 px: the stem, then per stage a strided
    first conv, a 1x1 downsample and the stride-1 3x3 convs (3 per stage, 4 in stage 1)."""
    from bt_jax.models import make_backbone
    layers = _experiment("bench_conv").conv_layers(
        make_backbone("resnet18", stem="cifar_pool", width=0.125), 28, 4)
    assert [(l["input"][1], l["kernel"], l["stride"], l["count"]) for l in layers] == [
        (28, (3, 3, 3, 8), 1, 1), (14, (3, 3, 8, 8), 1, 4),
        (14, (3, 3, 8, 16), 2, 1), (7, (3, 3, 16, 16), 1, 3), (14, (1, 1, 8, 16), 2, 1),
        (7, (3, 3, 16, 32), 2, 1), (4, (3, 3, 32, 32), 1, 3), (7, (1, 1, 16, 32), 2, 1),
        (4, (3, 3, 32, 64), 2, 1), (2, (3, 3, 64, 64), 1, 3), (4, (1, 1, 32, 64), 2, 1)]
    assert [l["first"] for l in layers] == [True] + [False] * 10


@pytest.mark.slow    # compiles 3 x 11 small layers (about a minute); `make test-slow` runs it
def test_bench_conv_times_every_impl_and_writes_its_csv(tmp_path):
    import csv
    out = tmp_path / "conv.csv"
    assert _experiment("bench_conv").main(["--width", "0.125", "--image-size", "16",
                                           "--batch", "4", "--steps", "1",
                                           "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11
    for r in rows:
        assert all(float(r[f"{impl}_ms"]) > 0 for impl in ("xla", "im2col", "dense"))
        assert r["auto"] in ("xla", "im2col", "dense") and r["best"] in ("xla", "im2col", "dense")


def test_loss_collective_floats_follow_the_ring_formulas():
    bench = _experiment("benchmark")
    assert bench.loss_floats_moved(2048, 8192, "direct", 1) == 0
    # All-reduce of the [D, D] matrix: 2 (W - 1) / W D^2 floats out of each device.
    assert bench.loss_floats_moved(2048, 8192, "direct", 8) == 2 * 7 / 8 * 8192 ** 2
    # All-gather of two [N, D] views; the backward pass sends nothing.
    assert bench.loss_floats_moved(2048, 8192, "gram", 8) == 2 * 7 / 8 * 2048 * 8192
    # Equal traffic at N = D; at the rule's 2N = D, half.
    assert bench.loss_floats_moved(8192, 8192, "gram", 4) == bench.loss_floats_moved(
        8192, 8192, "direct", 4)
    assert bench.loss_floats_moved(4096, 8192, "gram", 4) == 0.5 * bench.loss_floats_moved(
        4096, 8192, "direct", 4)


def test_sharded_loss_benchmark_asks_for_the_devices_it_lacks():
    bench = _experiment("benchmark")
    with pytest.raises(SystemExit, match="xla_force_host_platform_device_count=16"):
        bench.bench_loss(32, 8, "gram", 1, 0, devices=16)   # the tests have 8 devices


def test_benchmark_csv_keeps_older_rows_under_a_new_header(tmp_path):
    import csv
    bench = _experiment("benchmark")
    out = tmp_path / "bench.csv"
    out.write_text("what,impl,median_ms\nloss value+grad,bt_jax (JAX),12.5\n")
    bench.append_csv([{k: "" for k in bench.CSV_FIELDS} | {"what": "train step"}], str(out))
    with open(out) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == bench.CSV_FIELDS
    assert [(r["what"], r["median_ms"]) for r in rows] == [("loss value+grad", "12.5"),
                                                           ("train step", "")]


@pytest.mark.torch
def test_torch_reference_loss_and_lars_match_bt_jax():
    import torch
    import jax.numpy as jnp
    import numpy as np

    from bt_jax import optim
    from numpy_reference import bt_loss_and_grads
    ref = _experiment("torch_reference")
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 24, 10))
    got = ref.barlow_twins_loss(torch.tensor(z1), torch.tensor(z2), 0.02)
    np.testing.assert_allclose(float(got), bt_loss_and_grads(z1, z2, 0.02)[0], rtol=1e-9)

    params = {"w": rng.normal(size=(5, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(3)]
    tx = optim.lars(0.1, 0.1, weight_decay=0.01, momentum=0.9, eta=0.02)
    p_jax = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(p_jax)
    tensors = [torch.tensor(params["w"]), torch.tensor(params["b"])]
    opt = ref.LARS(tensors, lr=0.1, weight_decay=0.01, momentum=0.9, eta=0.02)
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, p_jax)
        p_jax = {k: p_jax[k] + updates[k] for k in p_jax}
        tensors[0].grad, tensors[1].grad = torch.tensor(g["w"]), torch.tensor(g["b"])
        opt.step()
    np.testing.assert_allclose(tensors[0].numpy(), p_jax["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tensors[1].numpy(), p_jax["b"], rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_torch_reference_step_runs():
    ref = _experiment("torch_reference")
    r = ref.benchmark_step(backbone="resnet18", stem="cifar", width=0.125, image_size=16,
                           projector=(32, 32), batch=8, steps=1, warmup=0, threads=1)
    assert r["seconds"] > 0 and r["torch_version"]
    model = ref.ResNet("resnet50", "imagenet", 0.25)
    assert model.num_features == 512                 # 2048 x 0.25, torchvision's layout


@pytest.mark.slow    # one tiny training process, about a minute on 2 cores
def test_fashion_mnist_tuning_logs_a_validation_run_and_plots_it(tmp_path):
    """The tuning runner on digits: the run is scored on a validation hold-out, its CSV row
    has wall time, pairs/s and validation accuracy, a second call skips the finished run,
    and the plot is drawn."""
    csv_path, png = tmp_path / "tuning.csv", tmp_path / "pareto.png"
    args = [sys.executable, "experiments/fashion_mnist_tuning.py", "--run", "t1",
            "--recipe", "configs/digits.py", "--root", str(tmp_path / "runs"),
            "--validation-examples", "200", "--csv", str(csv_path), "--out", str(png),
            "--set", "num_epochs=2", "--set", "log_every_steps=2", "--set", "model.width=0.0625",
            "--set", "model.projector_dims=(32,32)", "--set", "data.image_size=16",
            "--set", "eval.finetune.fractions=()", "--set", "eval.tsne_points=0",
            "--set", "eval.linear_fast.max_iter=20", "--set", "monitor.knn_every_epochs=1",
            "--note", "smoke", "--plot", "--chosen", "t1", "--markdown"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 1 and rows[0]["run"] == "t1" and rows[0]["status"] == "done"
    assert float(rows[0]["wall_min"]) > 0 and float(rows[0]["train_pairs_per_s"]) > 0
    assert 0 < float(rows[0]["val_linear_top1"]) <= 100 and rows[0]["pixels_linear_top1"]
    results = json.load(open(tmp_path / "runs" / "t1" / "results.json"))
    assert results["eval_split"] == "validation" and results["num_test"] == 200
    assert png.exists() and "| t1 | `num_epochs=2" in r.stdout
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "bt_jax.main" not in again.stdout   # finished: skipped
    assert list(csv.DictReader(open(csv_path)))[0]["wall_min"] == rows[0]["wall_min"]


def test_fashion_mnist_test_runs_on_the_test_split_and_summarises_seeds():
    """Final runs set validation_examples=0 and the seed; the summary's mean and sample std
    and the quick recipe's targets are computed per seed against that run's pixels."""
    final = _experiment("fashion_mnist_test")
    cmd = final.command("configs/fashion_mnist_quick.py", "/tmp/w", 2)
    assert "--config.data.validation_examples=0" in cmd and "--config.seed=2" in cmd
    rows = [{"status": "done", "seed": s, "wall_min": w, "train_pairs_per_s": "400",
             "test_linear_top1": lin, "test_knn_top1": knn, "pixels_linear_top1": "84.5",
             "pixels_knn_top1": "81.8", "random_linear_top1": "", "random_knn_top1": ""}
            for s, w, lin, knn in ((0, "14.0", "86.0", "82.0"), (1, "15.5", "87.0", "81.0"),
                                   (2, "13.0", "86.6", "81.9"))]
    rows.append({**rows[0], "seed": 3, "status": "failed (exit 1)", "test_linear_top1": "1"})
    s = final.summary(rows)
    assert s["test_linear_top1"]["n"] == 3
    np.testing.assert_allclose(s["test_linear_top1"]["mean"], np.mean([86.0, 87.0, 86.6]))
    np.testing.assert_allclose(s["test_linear_top1"]["std"],
                               np.std([86.0, 87.0, 86.6], ddof=1))
    assert (s["wall_min"]["min"], s["wall_min"]["max"]) == (13.0, 15.5)
    t = final.quick_targets(rows)
    assert set(t) == {"0", "1", "2"}
    assert t["0"] == {"wall_le_15_min": True, "linear_ge_86.5": False,
                      "linear_ge_pixels_plus_2": False, "knn_gt_pixels": True}
    assert t["1"] == {"wall_le_15_min": False, "linear_ge_86.5": True,
                      "linear_ge_pixels_plus_2": True, "knn_gt_pixels": False}
    assert all(t["2"].values())


def test_fashion_mnist_test_row_reads_a_finished_workdir(tmp_path):
    """A seed's CSV row comes from its workdir: accuracies in percent, wall minutes from the
    timed command, the median pairs/s without the first (compiling) interval, the monitor's
    calls before the last step as a share of the wall time."""
    final = _experiment("fashion_mnist_test")
    work = tmp_path / "quick-s1"
    work.mkdir()
    json.dump({"linear_top1": 0.8627, "knn_top1": 0.7935,
               "baselines": {"pixels": {"linear_top1": 0.845, "knn_top1": 0.818}}},
              open(work / "results.json", "w"))
    json.dump({"seconds": 600.0, "status": "done", "date": "2026-11-30"},
              open(work / "timing.json", "w"))
    with open(work / "metrics.jsonl", "w") as f:
        for row in ({"step": 25, "pairs_per_s": 10.0}, {"step": 50, "pairs_per_s": 150.0},
                    {"step": 75, "pairs_per_s": 160.0}, {"step": 98, "monitor_seconds": 60.0},
                    {"step": 100, "pairs_per_s": 170.0}, {"step": 100, "monitor_seconds": 9.0}):
            f.write(json.dumps(row) + "\n")
    row = final.row_of("quick", "configs/fashion_mnist_quick.py", 1, str(work))
    assert row["status"] == "done" and row["wall_min"] == 10.0 and row["date"] == "2026-11-30"
    assert (row["test_linear_top1"], row["test_knn_top1"]) == (86.27, 79.35)
    assert (row["pixels_linear_top1"], row["random_linear_top1"]) == (84.5, None)
    assert row["train_pairs_per_s"] == 160.0 and row["monitor_share"] == 0.1
    csv_path = tmp_path / "test.csv"
    final.write_row(row, str(csv_path))
    final.write_row({**row, "test_knn_top1": 80.0}, str(csv_path))   # same seed: replaced
    final.write_row({**row, "seed": 2}, str(csv_path))
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    assert [(r["seed"], r["test_knn_top1"]) for r in rows] == [("1", "80.0"), ("2", "79.35")]


def write_tiny_idx(directory, num_train: int = 512, num_test: int = 128) -> None:
    """Fashion-MNIST's four IDX files (gzipped) with random 28x28 images whose class shows
    in their mean brightness, so the probes have something to find."""
    import gzip
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.clip(rng.normal(20 * labels[:, None, None], 30, (n, 28, 28)), 0,
                         255).astype(np.uint8)
        for kind, arr, code in (("images", images, 3), ("labels", labels, 1)):
            header = bytes([0, 0, 8, code]) + b"".join(int(v).to_bytes(4, "big")
                                                       for v in arr.shape)
            with gzip.open(os.path.join(directory, f"{prefix}-{kind}-idx{code}-ubyte.gz"),
                           "wb") as f:
                f.write(header + arr.tobytes())


@pytest.mark.slow    # every part at tiny sizes: about 2 minutes on 2 cores; `make test-slow` (and CI) runs it
def test_gpu_check_dry_run_writes_every_field_without_tensorflow(tmp_path):
    write_tiny_idx(str(tmp_path / "fmnist"))
    out = tmp_path / "out"
    code = ("import sys; sys.modules['tensorflow'] = None; "
            "sys.modules['tensorflow_datasets'] = None; import runpy; "
            f"sys.argv = ['gpu_check.py', '--dry-run', '--out', {str(out)!r}, "
            f"'--fmnist-dir', {str(tmp_path / 'fmnist')!r}]; "
            "runpy.run_path('experiments/gpu_check.py', run_name='__main__')")
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.load(open(out / "gpu_check.json"))
    md = (out / "gpu_check.md").read_text()
    assert report["dry_run"] is True and "GPU check (dry run" in md
    env_part = report["environment"]
    assert env_part["platform"] == "cpu" and env_part["jax_version"]
    assert env_part["cuda_version"]["status"] == "not measured"
    assert report["device_memory"]["status"] == "not measured"
    step = report["resnet50_step"]
    assert [row["per_device_batch"] for row in step["rows"]] == [8, 16]
    for row in step["rows"]:
        assert row["pairs_per_s"] > 0 and row["compile_s"] > 0 and row["flops_per_step"] > 0
        assert row["mfu"]["status"] == "not measured"          # GPU-only numbers
        assert row["peak_memory_mib"]["status"] == "not measured"
    plan = report["plan"]                   # the planner beside the measured step
    assert plan["status"] == "measured" and plan["topology"] == "local"
    assert plan["per_device_batch"] == 8 and plan["planned_memory_mib"] > 0
    assert plan["estimated_step_ms"] > 0 and plan["measured_over_estimated_step"] > 0
    assert plan["device_kind_planned"] == plan["device_kind_here"]
    assert "The plan of the step against the measured step" in md
    torch_part = report["torch_step"]
    try:
        import torch  # noqa: F401
        assert torch_part["status"] == "measured"
        assert all(row["bt_jax_over_torch"] > 0 for row in torch_part["rows"])
        assert "bt_jax / PyTorch" in (out / "gpu_check.md").read_text()
    except ImportError:
        assert torch_part["status"] == "not measured"
    loss = report["loss_paths"]["rows"]
    assert [row["n"] for row in loss] == [16, 32, 64]
    assert all(row["direct_ms"] > 0 and row["gram_ms"] > 0 for row in loss)
    assert report["augmentation"]["pairs_per_s"] > 0
    quality = report["quality"]
    assert quality["status"] == "measured" and quality["epochs"] >= 1
    assert quality["train_images"] == 512
    # The tiny data's class shows in its brightness (write_tiny_idx): the probes must find
    # it, above chance (0.1), as they would not on misaligned labels or splits (permuted
    # test labels gave linear 0.08). The epochs follow the machine's speed and a 5 s run at
    # width 1/16 is chaotic: seen pixels 0.91, linear 0.71, kNN 0.41 on one 2-core EPYC and
    # linear 0.48, kNN 0.195 on another. On 128 test images chance has a binomial sd of
    # 0.027: linear >= 0.3 is 7 sd above it, kNN >= 0.15 is 1.9 sd.
    assert quality["pixels_linear_top1"] >= 0.8
    assert quality["test_linear_top1"] >= 0.3 and quality["test_knn_top1"] >= 0.15
    # As many epochs as fit in the dry run's 5 s at the measured speed, timed within the run.
    import gpu_check
    from bt_jax import cli
    batch = min(cli.load_recipe(os.path.join(ROOT, "configs", "fashion_mnist.py")).batch_size,
                512)
    assert quality["epochs"] == gpu_check.quality_epochs(quality["step_pairs_per_s"], 5.0,
                                                         512, batch)
    assert 0 < quality["train_s"] <= quality["wall_s"]
    assert (out / "quality_training_curves.png").exists()
    assert "Loss, value and gradients" in md and "Fashion-MNIST quality" in md


def test_gpu_check_quality_epochs_fit_the_time():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import gpu_check
    # 60,000 images, batch 256 (234 steps per epoch) at 10,000 pairs/s for 120 s: 4,687
    # steps, 20 whole epochs; never fewer than one.
    assert gpu_check.quality_epochs(10_000, 120, 60_000, 256) == 20
    assert gpu_check.quality_epochs(10, 1, 60_000, 256) == 1


@pytest.mark.slow    # two JAX processes: about 20 s on 2 cores
def test_bench_preemption_times_every_poll_on_two_processes(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "experiments/bench_preemption.py", "--processes", "2",
                        "--blocks", "2", "--steps", "3", "--dim", "16", "--batch", "8",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record["summary"]) == {"none", "gather", "coordinated"}
    assert record["summary"]["none"]["ratio"] == 1.0
    assert all(len(v) == 2 and min(v) > 0 for v in record["block_seconds"].values())
    assert "coordinated" in r.stdout and "steps/s" in r.stdout
    bad = subprocess.run([sys.executable, "experiments/bench_preemption.py", "--processes", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--processes must be at least 2" in bad.stderr
