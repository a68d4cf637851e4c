"""The paper's ablations (Zbontar et al. 2021, Sec. 4 and Tables 2-4) as config sweeps.

  python experiments/ablations.py --sweep seed --scale small --references   # the noise floor first
  python experiments/ablations.py --sweep loss --scale small
  python experiments/ablations.py --sweep all --scale small
  python experiments/ablations.py --sweep batch_size --scale paper --print-commands

Every run is the ordinary trainer (`bt_jax.train.train_and_evaluate`) on a recipe plus
config overrides, in its own workdir ROOT/SCALE/RUN. Runs are shared between sweeps (the
baseline is one run), resumable (an interrupted run resumes from its checkpoint) and
skipped once finished (results.json holds its probes, or RESULTS/runs.json, the ledger
committed beside the tables, records the same run: workdirs need not outlive a machine).
Each run is evaluated with the
recipe's standard probe (results.json's linear_top1) and kNN. The sweep then writes
experiments/results/NAME.csv, NAME.md (the table, the paper's numbers beside ours) and
NAME.png (at the small scale; experiments/results/SCALE/ for the others).

Every table carries the noise floor and the paper's verdict per row. The noise floor is the
seed sweep's spread at the same scale (the baseline with seeds 0, 1 and 2): a row's
difference from the baseline's mean over the seeds is beyond noise when it exceeds
2 x std x sqrt(1 + 1/n) (n seeds; about a 95% two-sided band for one run against the mean
of n). The paper column reads agrees (the same direction beyond noise, or both flat),
disagrees (the other direction, a change where the paper saw none, or none where the
paper's change is over 3x that threshold), within noise (the paper saw a smaller change,
or claimed one without a number, and this scale cannot tell it from seed noise), or no
claim.

Scales:
  small  configs/fashion_mnist_quick.py as it is: one epoch of Fashion-MNIST (234 steps at
         batch 256), probes fit on the 60,000 training images; about 10 to 12 min a run on
         2 CPU cores. Its baseline beats raw pixels' linear probe by more than 2 points.
  tiny   configs/fashion_mnist_narrow.py cut to 30,720 pairs per run (120 steps at batch 256),
         probes fit on 10,000 labelled training images; about 2 min 45 s a run on 2 CPU
         cores, for quick checks: its baseline learns less than raw pixels hold.
  paper  configs/imagenet.py at 300 epochs, the paper's ablation length, with the paper's
         SGD linear probe. --print-commands prints one `python -m bt_jax.main` command per
         run for a cluster's scheduler; --report-only then builds the tables.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import textwrap
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The paper's ImageNet linear top-1 after 300 epochs (Zbontar et al. 2021, Tables 2-4).
PAPER_BASELINE = 71.4


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


TINY_PAIRS = 30_720     # pairs of views per tiny-scale run, whatever the batch size

SCALES = {
    "small": Scale(
        recipe="configs/fashion_mnist_quick.py",
        overrides={"eval.baselines": False},       # the references are probed once
        widths=(256, 512, 1024, 2048, 4096),
        lambdas=(0.0005, 0.002, 0.0051, 0.02, 0.08),
        batch_sizes=(128, 256, 512, 1024),
        depths=(1, 2, 3, 4),
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
    expect: the paper's claim against the baseline where it gives no number ("lower",
      "flat" or "higher"; None: no claim); rows with a `paper` number derive it from that.
    control: the run this row is measured against (a follow-up's own control, e.g. the
      baseline at the same learning rate); None: the baseline's mean over the seeds.
    paper_ref: the paper's number that `paper` is a change from (e.g. its batch-256 row for
      a follow-up of its batch-512 row); None: the paper's baseline.
    """
    name: str
    setting: str
    overrides: dict
    paper: Optional[float] = None
    x: Optional[float] = None
    expect: Optional[str] = None
    control: Optional[str] = None
    paper_ref: Optional[float] = None


def _projector_width(scale: Scale) -> int:
    return _load_recipe(scale.recipe).model.projector_dims[-1]


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
                f"{LONGER}x)", {**over, "loss.stop_gradient": True}, 70.5, control=name),
            Run(f"predictor_{LONGER}x", f"predictor, {LONGER}x as long (vs baseline "
                f"{LONGER}x)", {**over, "model.predictor_dims": (d, d)}, 70.2, control=name),
            Run(f"info_nce_{LONGER}x", f"InfoNCE, {LONGER}x as long (vs baseline {LONGER}x)",
                {**over, **info_nce}, 63.3, control=name),
            Run(f"lambda_{lambd:g}_{LONGER}x", f"lambda {lambd:g}, {LONGER}x as long (vs "
                f"baseline {LONGER}x)", {**over, "loss.lambd": lambd}, expect="flat",
                control=name)]


def _scaled_length(scale: Scale, factor: int) -> dict:
    """The scale's overrides with training `factor` times as long (steps or epochs), warm-up
    and the kNN monitor scaled alike (the same fraction of the run)."""
    recipe = _load_recipe(scale.recipe)
    over = {**scale.overrides}
    if over.get("num_steps"):
        over["num_steps"] = factor * over["num_steps"]
    else:
        over["num_epochs"] = factor * over.get("num_epochs", recipe.num_epochs)
    for key in ("optim.warmup_epochs", "monitor.knn_every_epochs"):
        section, field = key.split(".")
        over[key] = round(factor * over.get(key, recipe[section][field]), 6)
    return over


def _lambda_scaled_run(scale: Scale, wide: Run) -> Run:
    """The widest projector with lambda scaled so that lambda (D - 1) / N, the weight of
    the off-diagonal term's sampling noise (D (D - 1) entries of variance ~1/N each)
    against the diagonal's D, stays the baseline's (0.020, as the paper's 0.0051 x 8191 /
    2048): does the wide projector lose because its redundancy term outweighs the
    invariance term at this batch size?"""
    recipe = _load_recipe(scale.recipe)
    d, w = recipe.model.projector_dims[-1], wide.x
    lambd = float(f"{recipe.loss.lambd * (d - 1) / (w - 1):.3g}")
    return Run(f"{wide.name}_lambda_scaled", f"projector width {w}, lambda {lambd:g} "
               f"(lambda (D - 1) / N as the baseline's)",
               {**wide.overrides, "loss.lambd": lambd}, expect="higher")


def _same_steps_batch_run(scale: Scale) -> Run:
    """The batch sweep's next batch size above the recipe's, trained for as many steps as
    the baseline (batch/default times the pairs): do the large batches lose, at a fixed
    number of pairs, for want of optimiser steps?"""
    default = _load_recipe(scale.recipe).batch_size
    batch = min(b for b in scale.batch_sizes if b > default)
    factor = batch // default
    paper = {r.x: r.paper for r in sweep_runs("batch_size", scale)}
    over = {**_scaled_length(scale, factor), "batch_size": batch}
    if scale.overrides.get("num_steps"):   # a step-count scale: the baseline's steps
        over["num_steps"] = scale.overrides["num_steps"]
    return Run(f"batch_{batch}_same_steps", f"batch {batch} for the baseline's steps "
               f"({factor}x the pairs; vs the baseline)", over, paper[batch],
               paper_ref=paper[default])


def sweep_runs(sweep: str, scale: Scale) -> list[Run]:
    """The runs of one sweep at one scale, the baseline (overrides {}) first."""
    base = Run("baseline", "baseline (full loss)", {}, PAPER_BASELINE)
    if sweep == "loss":      # paper Table 2, top half
        return [base,
                Run("invariance_only", "invariance term only (lambda 0)",
                    {"loss.lambd": 0.0}, 57.3),
                Run("redundancy_only", "redundancy term only",
                    {"loss.invariance_weight": 0.0}, 0.1),
                Run("feature_norm", "normalisation along the feature dim",
                    {"loss.normalization": "feature"}, 69.8),
                Run("no_projector_bn", "no BN in the projector",
                    {"model.projector_bn": False}, 71.2),
                Run("no_bn_no_norm", "no BN and no normalisation",
                    {"model.projector_bn": False, "loss.normalization": "none"}, 53.4),
                Run("info_nce", "cross-entropy with temperature (InfoNCE, t=0.1)",
                    {"loss.kind": "info_nce", "loss.info_nce.temperature": 0.1}, 63.3)]
    if sweep == "asymmetric":    # paper Table 2, bottom half
        d = _projector_width(scale)
        return [base,
                Run("stop_gradient", "stop-gradient on one branch",
                    {"loss.stop_gradient": True}, 70.5),
                Run("predictor", "predictor on one branch", {"model.predictor_dims": (d, d)},
                    70.2),
                Run("predictor_stop_gradient", "predictor and stop-gradient",
                    {"model.predictor_dims": (d, d), "loss.stop_gradient": True}, 61.3)]
    if sweep == "lambda":
        default = _load_recipe(scale.recipe).loss.lambd
        # The paper: flat over [0.002, 0.02]; no claim outside it.
        return [dataclasses.replace(base, x=v) if v == default else
                Run(f"lambda_{v:g}", f"lambda {v:g}", {"loss.lambd": v}, x=v,
                    expect="flat" if 0.002 <= v <= 0.02 else None)
                for v in scale.lambdas]
    if sweep == "projector_width":
        dims = _load_recipe(scale.recipe).model.projector_dims
        return [dataclasses.replace(base, x=w) if (w,) * len(dims) == tuple(dims) else
                Run(f"width_{w}", f"projector width {w}",
                    {"model.projector_dims": (w,) * len(dims)},
                    x=w, expect="higher" if w > dims[-1] else "lower")
                for w in scale.widths]
    if sweep == "projector_depth":
        dims = tuple(_load_recipe(scale.recipe).model.projector_dims)
        return [dataclasses.replace(base, x=n) if (dims[-1],) * n == dims else
                Run(f"depth_{n}", f"projector depth {n}",
                    {"model.projector_dims": (dims[-1],) * n}, x=n)
                for n in scale.depths]
    if sweep == "batch_size":    # paper Table 4
        paper = {128: 69.7, 256: 70.7, 512: 71.4, 1024: 71.7, 2048: 71.4, 4096: 70.7}
        default = _load_recipe(scale.recipe).batch_size
        steps = scale.overrides.get("num_steps", 0)
        runs = []
        for b in scale.batch_sizes:
            over = {"batch_size": b}
            if steps:   # a fixed step count: scale it so every batch size sees the same pairs
                over["num_steps"] = max(1, steps * default // b)
            runs.append(dataclasses.replace(base, setting=f"batch {b} (baseline)")
                        if b == default else Run(f"batch_{b}", f"batch {b}", over))
        return [dataclasses.replace(r, paper=paper.get(b), x=b)
                for r, b in zip(runs, scale.batch_sizes)]
    if sweep == "augmentations":     # paper Fig. 5 (values only in the figure)
        no_colour = {"data.augment.jitter_prob": 0.0, "data.augment.grayscale_prob": 0.0}
        crop_blur = {**no_colour, "data.augment.solarize_prob": (0.0, 0.0),
                     "data.augment.flip_prob": 0.0}
        return [base,
                Run("aug_no_colour", "no grayscale, no colour jitter", no_colour,
                    expect="lower"),
                Run("aug_crop_blur", "crop + blur only", crop_blur, expect="lower"),
                Run("aug_crop_only", "crop only", {**crop_blur,
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
                    63.3, control=f"{wide.name}_lambda_scaled"),
                _same_steps_batch_run(scale)] + _longer_runs(scale, info_nce)
    if sweep == "projector_init":   # not a paper ablation: FAIR's init against Flax's
        return [dataclasses.replace(base, setting="Flax's lecun_normal (baseline)"),
                Run("projector_init_torch", "PyTorch's nn.Linear default, as FAIR's code",
                    {"model.projector_init": "torch"})]
    if sweep == "redundancy":
        return [dataclasses.replace(base, setting="cross-correlation (baseline)"),
                Run("redundancy_auto", "auto-correlation of one branch",
                    {"loss.redundancy": "auto"}, expect="flat")]
    raise SystemExit(f"error: unknown sweep {sweep!r}; choose one of {SWEEPS} or 'all'.")


SWEEPS = ("loss", "asymmetric", "lambda", "projector_width", "projector_depth", "batch_size",
          "augmentations", "redundancy", "projector_init", "seed", "followup")

# What the paper says where it gives no number per row.
PAPER_NOTES = {
    "loss": "Paper Table 2 (ImageNet, 300 epochs, linear top-1).",
    "asymmetric": "Paper Table 2 (ImageNet, 300 epochs, linear top-1). Predictor: 2 linear "
                  "layers with BN and ReLU between, on view A.",
    "lambda": "Paper: accuracy is flat over lambda in [0.002, 0.02] (per-row numbers only "
              "in its figure).",
    "projector_width": "Paper: accuracy keeps rising with the projector's width up to 16384 "
                       "(per-row numbers only in its figure).",
    "projector_depth": "Paper: 3 layers is the default; no per-depth numbers recorded here.",
    "batch_size": "Paper Table 4 (ImageNet, 300 epochs): 128/256/512/1024/2048/4096 gave "
                  "69.7/70.7/71.4/71.7/71.4/70.7; the paper's change is against its "
                  "number at our baseline's batch size. At the small scale every batch size "
                  "trains one epoch, at the tiny scale 30,720 pairs.",
    "augmentations": "Paper Fig. 5: accuracy falls as augmentations are removed (values only "
                     "in the figure). Crop only drops the flip too; Fashion-MNIST is "
                     "grayscale, so its colour jitter is brightness and contrast only.",
    "seed": "Not a paper ablation: the baseline with other seeds (initialisation, data order "
            "and augmentations all change), to show how far a single run moves by chance.",
    "followup": "Extra runs that test an explanation for a disagreement with the paper, "
                "each measured against its own control (named in the row; the noise "
                "threshold of one run against another is 2 x std x sqrt(2)). The paper's "
                "columns are those of the row it follows up.",
    "redundancy": "The paper: the authors saw little difference between the cross- and "
                  "auto-correlation redundancy term.",
    "projector_init": "Not a paper ablation: FAIR's code leaves the projector's Linears at "
                      "PyTorch's default init (uniform, std 1 / sqrt(3 fan_in)); bt_jax's "
                      "default is Flax's lecun_normal (std 1 / sqrt(fan_in), 1.73x wider). "
                      "model.projector_init='torch' reproduces FAIR's.",
}


def _load_recipe(path: str):
    spec = importlib.util.spec_from_file_location("_ablation_recipe", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_set(items: list[str]) -> dict:
    """["a.b=1", "c=(1, 2)"] -> {"a.b": 1, "c": (1, 2)} (values read as Python literals,
    else kept as strings)."""
    import ast  # pylint: disable=import-outside-toplevel
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set takes FIELD=VALUE (e.g. --set num_steps=5); got "
                             f"{item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def apply_overrides(config, overrides: dict):
    """A copy of config with each dotted field set; an unknown field is an error."""
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p] if p in node else None
            if node is None:
                break
        if node is None or leaf not in node:
            raise SystemExit(f"error: unknown config field {key!r}; fields are listed in "
                             "bt_jax/config.py.")
        node[leaf] = value
    return config


def run_overrides(scale: Scale, run: Run, extra: dict) -> dict:
    """Scale, then run, then --set overrides (later ones win)."""
    return {**scale.overrides, **run.overrides, **extra}


def train_command(scale: Scale, run: Run, extra: dict, workdir: str) -> str:
    """The `python -m bt_jax.main` command that trains and evaluates one run."""
    args = ["python", "-m", "bt_jax.main",
            f"--config={scale.recipe}", f"--workdir={workdir}"]
    for key, value in run_overrides(scale, run, extra).items():
        text = f"({', '.join(map(repr, value))}{',' if len(value) == 1 else ''})" \
            if isinstance(value, tuple) else str(value)
        args.append(f"--config.{key}={text}")
    return " ".join(shlex.quote(a) for a in args)


def read_json(path: str) -> Optional[dict]:
    """The JSON object in path, or None when it is missing or unreadable (a run killed
    while writing it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_status(workdir: str, overrides: dict) -> str:
    """"done" | "failed" | "todo". A workdir made with other overrides is an error: the
    sweep would otherwise report another experiment's numbers."""
    record = read_json(os.path.join(workdir, "ablation.json"))
    if record is not None and record.get("overrides") != json.loads(json.dumps(overrides)):
        raise SystemExit(
            f"error: {workdir!r} holds a run with other overrides ({record.get('overrides')}); "
            "delete it or pass another --root.")
    results = read_json(os.path.join(workdir, "results.json")) or {}
    if "linear_top1" in results and "knn_top1" in results:
        return "done"
    return "failed" if record is not None and record.get("status") == "failed" else "todo"


def train_run(scale: Scale, run: Run, extra: dict, workdir: str) -> dict:
    """Trains and evaluates one run in this process; a run that fails (e.g. diverges) is
    recorded as failed in workdir/ablation.json and the sweep goes on."""
    from bt_jax import train  # pylint: disable=import-outside-toplevel
    overrides = run_overrides(scale, run, extra)
    config = apply_overrides(_load_recipe(scale.recipe), overrides)
    os.makedirs(workdir, exist_ok=True)
    record_path = os.path.join(workdir, "ablation.json")
    record = read_json(record_path) or {"overrides": json.loads(json.dumps(overrides)),
                                         "seconds": 0.0}
    print(f"\n=== {run.name}: {run.setting}\n    {train_command(scale, run, extra, workdir)}",
          flush=True)
    start = time.perf_counter()
    try:
        train.train_and_evaluate(config, workdir)
        record.update(status="done", error="")
    except (FloatingPointError, ValueError, RuntimeError) as e:   # diverged, or cannot run
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        print(f"run {run.name} failed: {record['error']}", flush=True)
    record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - start
    with open(record_path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(record_path + ".tmp", record_path)
    return record


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


def collect_row(sweep: str, run: Run, workdir: str) -> dict:
    """One CSV row from a run's workdir (accuracies in percent; empty where missing)."""
    results = read_json(os.path.join(workdir, "results.json")) or {}
    record = read_json(os.path.join(workdir, "ablation.json")) or {}
    final = {}
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        final = lines[-1] if lines else {}
    except (OSError, ValueError):
        pass

    def pct(key):
        return round(100 * results[key], 2) if key in results else ""

    status = "done" if "linear_top1" in results else record.get("status", "todo")
    return {"sweep": sweep, "run": run.name, "setting": run.setting,
            "x": "" if run.x is None else run.x, "status": status,
            "linear_top1": pct("linear_top1"), "linear_top5": pct("linear_top5"),
            "knn_top1": pct("knn_top1"), "knn_top5": pct("knn_top5"),
            "online_top1": pct("online_linear_top1"),
            "effective_rank": round(results["diagnostics"]["test_features_effective_rank"], 2)
            if "test_features_effective_rank" in results.get("diagnostics", {}) else "",
            "final_loss": round(final["loss"], 4) if "loss" in final else "",
            "steps": final.get("step", ""),
            "seconds": round(record["seconds"]) if "seconds" in record else "",
            "paper_top1": "" if run.paper is None else run.paper}


REFERENCES = (("random_init", "reference: same encoder, random init (no training)"),
              ("pixels", "reference: raw pixels"))


def reference_rows(sweep: str, workdir: str, ledger: Optional[dict] = None) -> list[dict]:
    """Rows for the random-init encoder and raw pixels, probed the same way, from the
    baseline's results.json (present once `--references` evaluated them), else from the
    ledger's baseline entry. Found in results.json, they are recorded in the ledger."""
    results = read_json(os.path.join(workdir, "results.json")) or {}
    found = results.get("baselines", {})
    entry = (ledger or {}).get("baseline")
    if found and entry is not None:
        entry["references"] = found
    elif not found and entry is not None:
        found = entry.get("references", {})
    rows = []
    for key, setting in REFERENCES:
        r = found.get(key)
        if r:
            rows.append({**{f: "" for f in CSV_FIELDS}, "sweep": sweep, "run": f"ref_{key}",
                         "setting": setting, "status": "reference",
                         "linear_top1": round(100 * r["linear_top1"], 2),
                         "linear_top5": round(100 * r["linear_top5"], 2),
                         "knn_top1": round(100 * r["knn_top1"], 2),
                         "knn_top5": round(100 * r["knn_top5"], 2)})
    return rows


def evaluate_references(scale: Scale, extra: dict, workdir: str) -> None:
    """Probes the random-init encoder and raw pixels beside the finished baseline run
    (`python -m bt_jax.evaluate` with eval.baselines=True); results.json gains
    "baselines"."""
    from bt_jax import evaluate  # pylint: disable=import-outside-toplevel
    config = apply_overrides(_load_recipe(scale.recipe),
                             {**run_overrides(scale, Run("baseline", "", {}), extra),
                              "eval.baselines": True})
    evaluate.evaluate_workdir(workdir, config)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# The ledger: every finished (or failed) run's row, kept beside the tables in
# RESULTS/runs.json, so that a sweep resumes where it stopped on another machine or after
# the workdirs are gone (they are not part of the repository). A run whose workdir holds no
# result is taken from the ledger when its overrides there are the same; its workdir wins
# otherwise.
LEDGER = "runs.json"
_RUN_FIELDS = ("sweep", "setting", "x", "paper_top1")   # the sweep's, not the run's


def read_ledger(results_dir: str) -> dict:
    """{run name: {"overrides", "row", ["references"]}} from results_dir/runs.json, with
    overrides of fields that moved under their new names (bt_jax.config.RENAMED)."""
    from bt_jax.config import RENAMED  # pylint: disable=import-outside-toplevel
    ledger = read_json(os.path.join(results_dir, LEDGER)) or {}
    for entry in ledger.values():
        if "overrides" in entry:
            entry["overrides"] = {RENAMED.get(k, k): v for k, v in entry["overrides"].items()}
    return ledger


def write_ledger(ledger: dict, results_dir: str) -> None:
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, LEDGER)
    with open(path + ".tmp", "w") as f:
        json.dump(ledger, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def ledger_entry(ledger: dict, name: str, overrides: dict) -> Optional[dict]:
    """The ledger's entry for a run with exactly these overrides, else None."""
    entry = ledger.get(name)
    if entry and entry.get("overrides") == json.loads(json.dumps(overrides)):
        return entry
    return None


def run_row(sweep: str, run: Run, workdir: str, overrides: dict, ledger: dict) -> dict:
    """The run's row: from its workdir when that holds a result (the ledger is updated),
    else from the ledger when it recorded the same overrides, else "todo"."""
    row = collect_row(sweep, run, workdir)
    if row["status"] in ("done", "failed"):
        kept = {k: v for k, v in row.items() if k not in _RUN_FIELDS}
        entry = ledger.setdefault(run.name, {})
        entry.update(overrides=json.loads(json.dumps(overrides)), row=kept)
        return row
    entry = ledger_entry(ledger, run.name, overrides)
    if entry is None:
        return row
    return {**row, **{k: v for k, v in entry["row"].items() if k in CSV_FIELDS},
            "run": run.name}


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


def report(sweep: str, runs: list[Run], scale_name: str, root: str, results_dir: str,
           command: str, extra: Optional[dict] = None) -> tuple[list[dict], Optional[dict]]:
    """Writes NAME.csv, NAME.md and NAME.png for one sweep, and records its runs in the
    ledger (runs.json); returns the annotated rows and the scale's noise floor (from its
    seed sweep's runs). extra: the --set overrides every run was trained with."""
    scale = SCALES[scale_name]
    scale_root = os.path.join(root, scale_name)
    ledger = read_ledger(results_dir)

    def row(sweep_name: str, run: Run) -> dict:
        return run_row(sweep_name, run, os.path.join(scale_root, run.name),
                       run_overrides(scale, run, extra or {}), ledger)
    floor = noise_floor([row("seed", r) for r in sweep_runs("seed", scale)])
    rows = annotate([row(sweep, r) for r in runs], runs, floor)
    rows += reference_rows(sweep, os.path.join(scale_root, "baseline"), ledger)
    write_ledger(ledger, results_dir)
    stem = os.path.join(results_dir, sweep)
    write_csv(rows, stem + ".csv")
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(sweep, rows, scale_name=scale_name, command=command,
                               floor=floor))
    plot_sweep(sweep, rows, stem + ".png", floor)
    return rows, floor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True, help=f"one of {SWEEPS}, or 'all'")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "ablations"),
                        help="workdirs go to ROOT/SCALE/RUN")
    parser.add_argument("--results", default=os.path.join(ROOT, "experiments", "results"),
                        help="where NAME.csv, NAME.md and NAME.png go (other scales than "
                             "small: into its SCALE/ sub-directory)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config override for every run (repeatable)")
    parser.add_argument("--run", action="append", default=[],
                        help="only these runs of the sweep (repeatable; e.g. one per job)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="train runs recorded as failed again")
    parser.add_argument("--references", action="store_true",
                        help="also probe a random-init encoder and raw pixels beside the "
                             "baseline (once; their rows join every table)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print each run's `python -m bt_jax.main` command; train nothing")
    mode.add_argument("--report-only", action="store_true",
                      help="train nothing; build the tables from the workdirs")
    args = parser.parse_args(argv)

    scale = SCALES[args.scale]
    results_dir = (args.results if args.scale == "small"
                   else os.path.join(args.results, args.scale))
    extra = parse_set(args.set)
    sweeps = SWEEPS if args.sweep == "all" else tuple(args.sweep.split(","))

    def command(sweep: str) -> str:   # what reproduces one sweep's table
        return " ".join(["python experiments/ablations.py", f"--sweep {sweep}",
                         f"--scale {args.scale}"] + [f"--set {shlex.quote(s)}" for s in args.set]
                        + (["--references"] if args.references else []))

    for sweep in sweeps:
        ledger = read_ledger(results_dir)
        runs = sweep_runs(sweep, scale)
        names = [r.name for r in runs]
        unknown = [n for n in args.run if n not in names]
        if unknown and len(sweeps) == 1:
            raise SystemExit(f"error: sweep {sweep!r} has no run {unknown}; its runs: {names}.")
        selected = [r for r in runs if not args.run or r.name in args.run]
        for run in selected:
            workdir = os.path.join(args.root, args.scale, run.name)
            if args.print_commands:
                print(train_command(scale, run, extra, os.path.relpath(workdir)))
                continue
            overrides = run_overrides(scale, run, extra)
            status, where = run_status(workdir, overrides), ""
            recorded = ledger_entry(ledger, run.name, overrides)
            if status == "todo" and recorded:
                status, where = recorded["row"]["status"], f" (recorded in {LEDGER})"
            if args.report_only or status == "done" or (status == "failed"
                                                        and not args.retry_failed):
                print(f"{sweep}/{run.name}: {status}{where}, skipped", flush=True)
                continue
            train_run(scale, run, extra, workdir)
            run_row(sweep, run, workdir, overrides, ledger)   # recorded at once: a later
            write_ledger(ledger, results_dir)                  # run may be cut short
        if args.print_commands:
            continue
        base_dir = os.path.join(args.root, args.scale, "baseline")
        if (args.references and not args.report_only
                and run_status(base_dir, run_overrides(scale, Run("baseline", "", {}),
                                                       extra)) == "done"
                and not reference_rows(sweep, base_dir, read_ledger(results_dir))):
            evaluate_references(scale, extra, base_dir)
        rows, floor = report(sweep, runs, args.scale, args.root, results_dir, command(sweep),
                             extra)
        print("\n" + markdown_table(sweep, rows, scale_name=args.scale, command=command(sweep),
                                    floor=floor), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
