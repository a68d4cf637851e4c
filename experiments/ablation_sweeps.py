"""The sweeps of experiments/ablations.py as data: the scales (a recipe and the overrides
every run of that scale starts from) and, per sweep, its runs, each a set of config
overrides with the paper's number beside it and the paper's note on the sweep.

The paper's numbers and claims beside each run come from ablation_paper.py. A run's
overrides use the config's field names, read as the command line reads them
(`bt_jax.cli.load_recipe`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from ablation_paper import (AUTO_CORRELATION_HEDGE, INFO_NCE_NOT_COMPARABLE,  # noqa: F401
                            PAPER_BASELINE, PAPER_BATCH_TOP1, TABLE_6_CLAIM,
                            batch_expectation, depth_expectation)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(path: str):
    """The recipe at `path` (relative to the repository), as `python -m bt_jax.main` reads it."""
    from bt_jax import cli  # pylint: disable=import-outside-toplevel
    return cli.load_recipe(os.path.join(ROOT, path))



@dataclasses.dataclass(frozen=True)
class Scale:
    """A recipe file and the overrides every run of this scale starts from."""
    recipe: str
    overrides: dict
    widths: tuple      # projector widths of the width sweep
    lambdas: tuple
    batch_sizes: tuple
    depths: tuple
    description: str
    # Rows whose verdict one run cannot settle (ablation_report.is_borderline on this
    # scale's single runs), and the controls they are measured against: each is trained
    # with REPEAT_SEEDS seeds and its row is their mean.
    repeated: tuple = ()


TINY_PAIRS = 30_720     # pairs of views per tiny-scale run, whatever the batch size

SCALES = {
    "small": Scale(
        recipe="configs/fashion_mnist_quick.py",
        overrides={"eval.baselines": False},       # the references are probed once
        widths=(256, 512, 1024, 2048, 4096),
        lambdas=(0.0005, 0.002, 0.0051, 0.02, 0.08),
        batch_sizes=(128, 256, 512, 1024),
        depths=(1, 2, 3, 4),
        # Borderline on their single run (2026-12-03): |delta| within 1.5x of its
        # threshold on a probe, or a verdict that changed with the two-probe rule and the
        # paper's words (stop-gradient: Table 6's "slightly decrease", once "flat"); plus
        # the controls of borderline follow-ups (baseline_lr10, width_4096_lambda_scaled,
        # baseline_3x). info_nce_3x became borderline (kNN +1.0 against a threshold of
        # 1.20) once its control baseline_3x was a 3-run mean (2026-12-05).
        repeated=("feature_norm", "info_nce", "stop_gradient", "lambda_0.002", "width_256",
                  "depth_1", "depth_3", "depth_4", "no_projector_bn_lr10", "baseline_lr10",
                  "width_4096_lambda_scaled", "info_nce_width_4096", "batch_512_same_steps",
                  "stop_gradient_3x", "baseline_3x", "info_nce_3x"),
        description=("Fashion-MNIST, the quick recipe (configs/fashion_mnist_quick.py): "
                     "ResNet-18 (cifar_pool stem, width 0.5: 256 features), projector "
                     "1024-1024, batch 256, one epoch (234 steps), LARS at 50x the paper's "
                     "learning rates, crops of scale 0.85-1; fast L-BFGS linear probe and kNN "
                     "(k=200) fit on the 60,000 training images, tested on the 10,000 test "
                     "images."),
    ),
    "tiny": Scale(
        recipe="configs/fashion_mnist_narrow.py",
        overrides={
            "num_steps": TINY_PAIRS // 256,
            "optim.warmup_epochs": 0.05,          # 12 of the 120 steps at batch 256
            "log_every_steps": 20,
            "checkpoint.every_steps": 60,
            "eval.linear_protocol": "linear_fast",
            "eval.linear_sgd.epochs": 0,
            "eval.probe_train_examples": 10_000,
            "eval.baselines": False,
            "eval.finetune.fractions": (),
            "eval.tsne_points": 0,
            "monitor.diagnostics_every_steps": 0,
        },
        widths=(128, 256, 512, 1024, 2048),
        lambdas=(0.0005, 0.002, 0.0051, 0.02, 0.08),
        batch_sizes=(128, 256, 512, 1024),
        depths=(1, 2, 3, 4),
        description=("Fashion-MNIST, ResNet-18 (CIFAR stem, width 0.125: 64 features), "
                     "projector 1024-1024-1024, 30,720 pairs per run (120 steps at batch "
                     "256), seed 0; fast L-BFGS linear probe and kNN (k=200) fit on 10,000 "
                     "class-balanced training images, tested on the 10,000 test images."),
    ),
    "paper": Scale(
        recipe="configs/imagenet.py",
        overrides={"num_epochs": 300},
        widths=(512, 1024, 2048, 4096, 8192, 16384),
        lambdas=(0.001, 0.002, 0.0051, 0.01, 0.02, 0.05),
        batch_sizes=(128, 256, 512, 1024, 2048, 4096),
        depths=(1, 2, 3, 4),
        description=("ImageNet, ResNet-50, projector 8192-8192-8192, batch 2048, 300 epochs "
                     "(the paper's ablation length); the paper's SGD linear probe (100 "
                     "epochs) and kNN (k=200)."),
    ),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One row of a sweep's table.

    name: the workdir's name; runs with equal overrides share it (and their results).
    setting: the table's row label. overrides: config field -> value, on top of the scale's.
    paper: the paper's ImageNet linear top-1 for this row, if it reports one.
    x: the swept number, for sweeps plotted against a value (lambda, width, batch, depth).
    expect: the paper's stated claim against the baseline ("lower", "flat" or "higher";
      None: no claim); it decides where the row has no `paper` number, or one within
      PAPER_FLAT of the baseline's (ablation_report.paper_expectation).
    control: the run this row is measured against (a follow-up's own control, e.g. the
      baseline at the same learning rate); None: the baseline's mean over the seeds.
    paper_ref: the paper's number that `paper` is a change from (e.g. its batch-256 row for
      a follow-up of its batch-512 row); None: the paper's baseline.
    not_comparable: why this row's setting is not the paper's row it stands beside (its
      verdict is then "not comparable"); "" where it is the paper's.
    hedge: how the paper qualifies its claim for this row (e.g. "preliminary, not shown");
      the summary does not count agreement with a hedged claim as a reproduction.
    """
    name: str
    setting: str
    overrides: dict
    paper: Optional[float] = None
    x: Optional[float] = None
    expect: Optional[str] = None
    control: Optional[str] = None
    paper_ref: Optional[float] = None
    repeats: int = 1
    not_comparable: str = ""
    hedge: str = ""


REPEAT_SEEDS = 3     # a repeated row: seeds 0, 1 and 2, as the seed sweep's baseline


def repeat_runs(run: Run) -> list[Run]:
    """The runs behind one row: the run itself (seed 0) and, for a repeated row, the same
    overrides with seeds 1 .. repeats-1 (workdirs NAME_seedK; the baseline's are the seed
    sweep's seed_K)."""
    extra = [Run(f"seed_{k}" if run.name == "baseline" else f"{run.name}_seed{k}",
                 run.setting, {**run.overrides, "seed": k}) for k in range(1, run.repeats)]
    return [run] + extra


def _projector_width(scale: Scale) -> int:
    return recipe(scale.recipe).model.projector_dims[-1]


LONGER = 3    # the follow-ups' "longer" runs train this many times the scale's length


def _longer_runs(scale: Scale, info_nce: dict) -> list[Run]:
    """The baseline and the variants whose one-epoch results disagree with the paper
    (stop-gradient, predictor, InfoNCE, lambda at the top of the paper's flat range),
    trained LONGER times as long (warm-up and the kNN monitor scaled alike): does the
    paper's result appear with training?"""
    over = _scaled_length(scale, LONGER)
    d = _projector_width(scale)
    lambd = max(v for v in scale.lambdas if v <= 0.02)   # the paper's flat range's top
    name = f"baseline_{LONGER}x"
    return [Run(name, f"baseline, {LONGER}x as long", over),
            Run(f"stop_gradient_{LONGER}x", f"stop-gradient, {LONGER}x as long (vs baseline "
                f"{LONGER}x)", {**over, "loss.stop_gradient": True}, 70.5,
                expect=TABLE_6_CLAIM, control=name),
            Run(f"predictor_{LONGER}x", f"predictor, {LONGER}x as long (vs baseline "
                f"{LONGER}x)", {**over, "model.predictor_dims": (d, d)}, 70.2,
                expect=TABLE_6_CLAIM, control=name),
            Run(f"info_nce_{LONGER}x", f"InfoNCE, {LONGER}x as long (vs baseline {LONGER}x)",
                {**over, **info_nce}, 63.3, control=name,
                not_comparable=INFO_NCE_NOT_COMPARABLE),
            Run(f"lambda_{lambd:g}_{LONGER}x", f"lambda {lambd:g}, {LONGER}x as long (vs "
                f"baseline {LONGER}x)", {**over, "loss.lambd": lambd}, expect="flat",
                control=name)]


def _scaled_length(scale: Scale, factor: int) -> dict:
    """The scale's overrides with training `factor` times as long (steps or epochs), warm-up
    and the kNN monitor scaled alike (the same fraction of the run)."""
    base = recipe(scale.recipe)
    over = {**scale.overrides}
    if over.get("num_steps"):
        over["num_steps"] = factor * over["num_steps"]
    else:
        over["num_epochs"] = factor * over.get("num_epochs", base.num_epochs)
    for key in ("optim.warmup_epochs", "monitor.knn_every_epochs"):
        section, field = key.split(".")
        over[key] = round(factor * over.get(key, base[section][field]), 6)
    return over


def _lambda_scaled_run(scale: Scale, wide: Run) -> Run:
    """The widest projector with lambda scaled so that lambda (D - 1) / N, the weight of
    the off-diagonal term's sampling noise (D (D - 1) entries of variance ~1/N each)
    against the diagonal's D, stays the baseline's (0.020, as FAIR's 0.0051 x 8191 /
    2048): does the wide projector lose because its redundancy term outweighs the
    invariance term at this batch size?"""
    base = recipe(scale.recipe)
    d, w = base.model.projector_dims[-1], wide.x
    lambd = float(f"{base.loss.lambd * (d - 1) / (w - 1):.3g}")
    return Run(f"{wide.name}_lambda_scaled", f"projector width {w}, lambda {lambd:g} "
               f"(lambda (D - 1) / N as the baseline's)",
               {**wide.overrides, "loss.lambd": lambd}, expect="higher")


def _same_steps_batch_run(scale: Scale) -> Run:
    """The batch sweep's next batch size above the recipe's, trained for as many steps as
    the baseline (batch/default times the pairs): do the large batches lose, at a fixed
    number of pairs, for want of optimiser steps?"""
    default = recipe(scale.recipe).batch_size
    batch = min(b for b in scale.batch_sizes if b > default)
    factor = batch // default
    over = {**_scaled_length(scale, factor), "batch_size": batch}
    if scale.overrides.get("num_steps"):   # a step-count scale: the baseline's steps
        over["num_steps"] = scale.overrides["num_steps"]
    return Run(f"batch_{batch}_same_steps", f"batch {batch} for the baseline's steps "
               f"({factor}x the pairs; vs the baseline)", over,
               PAPER_BATCH_TOP1.get(batch), expect=batch_expectation(batch),
               paper_ref=PAPER_BATCH_TOP1.get(default))


def sweep_runs(sweep: str, scale: Scale) -> list[Run]:
    """The rows of one sweep at one scale, the baseline (overrides {}) first; the scale's
    repeated rows with REPEAT_SEEDS runs (the seed sweep's rows are single runs)."""
    runs = _sweep_rows(sweep, scale)
    if sweep == "seed":
        return runs
    return [dataclasses.replace(r, repeats=REPEAT_SEEDS) if r.name in scale.repeated else r
            for r in runs]


def _sweep_rows(sweep: str, scale: Scale) -> list[Run]:
    base = Run("baseline", "baseline (full loss)", {}, PAPER_BASELINE)
    if sweep == "loss":      # paper Table 5
        return [base,
                Run("invariance_only", "invariance term only (lambda 0)",
                    {"loss.lambd": 0.0}, 57.3),
                Run("redundancy_only", "redundancy term only",
                    {"loss.invariance_weight": 0.0}, 0.1),
                Run("feature_norm", "normalisation along the feature dim",
                    {"loss.normalization": "feature"}, 69.8),
                Run("no_projector_bn", "no BN in the projector",   # "barely affected"
                    {"model.projector_bn": False}, 71.2, expect="flat"),
                Run("no_bn_no_norm", "no BN and no normalisation",
                    {"model.projector_bn": False, "loss.normalization": "none"}, 53.4),
                Run("info_nce", "InfoNCE over the batch (t=0.1; the paper's row: cross-entropy "
                    "with temperature)",
                    {"loss.kind": "info_nce", "loss.info_nce.temperature": 0.1}, 63.3,
                    not_comparable=INFO_NCE_NOT_COMPARABLE)]
    if sweep == "asymmetric":    # paper Table 6
        d = _projector_width(scale)
        return [base,
                Run("stop_gradient", "stop-gradient on one branch",
                    {"loss.stop_gradient": True}, 70.5, expect=TABLE_6_CLAIM),
                Run("predictor", "predictor on one branch", {"model.predictor_dims": (d, d)},
                    70.2, expect=TABLE_6_CLAIM),
                Run("predictor_stop_gradient", "predictor and stop-gradient",
                    {"model.predictor_dims": (d, d), "loss.stop_gradient": True}, 61.3)]
    if sweep == "lambda":
        default = recipe(scale.recipe).loss.lambd
        # The paper: flat over [0.002, 0.02]; no claim outside it.
        return [dataclasses.replace(base, x=v) if v == default else
                Run(f"lambda_{v:g}", f"lambda {v:g}", {"loss.lambd": v}, x=v,
                    expect="flat" if 0.002 <= v <= 0.02 else None)
                for v in scale.lambdas]
    if sweep == "projector_width":
        dims = recipe(scale.recipe).model.projector_dims
        return [dataclasses.replace(base, x=w) if (w,) * len(dims) == tuple(dims) else
                Run(f"width_{w}", f"projector width {w}",
                    {"model.projector_dims": (w,) * len(dims)},
                    x=w, expect="higher" if w > dims[-1] else "lower")
                for w in scale.widths]
    if sweep == "projector_depth":
        dims = tuple(recipe(scale.recipe).model.projector_dims)
        return [dataclasses.replace(base, x=n) if (dims[-1],) * n == dims else
                Run(f"depth_{n}", f"projector depth {n}",
                    {"model.projector_dims": (dims[-1],) * n}, x=n,
                    expect=depth_expectation(n, len(dims)))
                for n in scale.depths]
    if sweep == "batch_size":    # paper Fig. 2
        paper = PAPER_BATCH_TOP1
        default = recipe(scale.recipe).batch_size
        steps = scale.overrides.get("num_steps", 0)
        runs = []
        for b in scale.batch_sizes:
            over = {"batch_size": b}
            if steps:   # a fixed step count: scale it so every batch size sees the same pairs
                over["num_steps"] = max(1, steps * default // b)
            runs.append(dataclasses.replace(base, setting=f"batch {b} (baseline)")
                        if b == default else Run(f"batch_{b}", f"batch {b}", over))
        return [dataclasses.replace(r, paper=paper.get(b), x=b,
                                    expect=None if b == default else batch_expectation(b))
                for r, b in zip(runs, scale.batch_sizes)]
    if sweep == "augmentations":     # paper Fig. 3 (values only in the figure)
        no_colour = {"data.augment.jitter_prob": 0.0, "data.augment.grayscale_prob": 0.0}
        crops = {**no_colour, "data.augment.solarize_prob": (0.0, 0.0),
                 "data.augment.flip_prob": 0.0}
        return [base,
                Run("aug_no_colour", "no grayscale, no colour jitter", no_colour,
                    expect="lower"),
                Run("aug_crop_blur", "crop + blur only (the paper's blur: p 1.0 / 0.1)",
                    {**crops, "data.augment.blur_prob": (1.0, 0.1)}, expect="lower"),
                Run("aug_crop_only", "crop only", {**crops,
                                                   "data.augment.blur_prob": (0.0, 0.0)},
                    expect="lower")]
    if sweep == "seed":      # not in the paper: how far runs move by the seed alone
        return [dataclasses.replace(base, setting="seed 0 (baseline)", x=0)] + [
            Run(f"seed_{k}", f"seed {k}", {"seed": k}, x=k) for k in (1, 2)]
    if sweep == "followup":  # one extra run per disagreement, beside its own control
        lr10 = {"optim.lr_weights": 2.0, "optim.lr_biases": 0.048}   # 10x the paper's
        wide = max(sweep_runs("projector_width", scale), key=lambda r: r.x)   # the widest
        info_nce = {"loss.kind": "info_nce", "loss.info_nce.temperature": 0.1}
        return [base,
                Run("baseline_lr10", "baseline at 10x the paper's learning rates", lr10),
                Run("no_projector_bn_lr10", "no BN in the projector, 10x LR (vs baseline "
                    "at 10x LR)", {**lr10, "model.projector_bn": False}, 71.2,
                    control="baseline_lr10"),
                Run("no_bn_no_norm_lr10", "no BN and no normalisation, 10x LR (vs baseline "
                    "at 10x LR)", {**lr10, "model.projector_bn": False,
                                   "loss.normalization": "none"}, 53.4,
                    control="baseline_lr10"),
                dataclasses.replace(wide, expect=None, x=None),
                _lambda_scaled_run(scale, wide),
                Run(f"info_nce_{wide.name}", f"InfoNCE, projector width {wide.x} (vs Barlow "
                    f"Twins at width {wide.x}, lambda scaled)", {**wide.overrides, **info_nce},
                    63.3, control=f"{wide.name}_lambda_scaled",
                    not_comparable=INFO_NCE_NOT_COMPARABLE),
                _same_steps_batch_run(scale)] + _longer_runs(scale, info_nce)
    if sweep == "projector_init":   # not a paper ablation: FAIR's init against Flax's
        return [dataclasses.replace(base, setting="Flax's lecun_normal (baseline)"),
                Run("projector_init_torch", "PyTorch's nn.Linear default, as FAIR's code",
                    {"model.projector_init": "torch"})]
    if sweep == "redundancy":
        return [dataclasses.replace(base, setting="cross-correlation (baseline)"),
                Run("redundancy_auto", "auto-correlation of one branch",
                    {"loss.redundancy": "auto"}, expect="flat",
                    hedge=AUTO_CORRELATION_HEDGE)]
    raise SystemExit(f"error: unknown sweep {sweep!r}; choose one of {SWEEPS} or 'all'.")


SWEEPS = ("loss", "asymmetric", "lambda", "projector_width", "projector_depth", "batch_size",
          "augmentations", "redundancy", "projector_init", "seed", "followup")
