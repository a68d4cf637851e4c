"""Semi-supervised fine-tuning (the paper's Appendix B.2): backbone and a linear head
trained together on each class-balanced label fraction of the train split, tested on the
evaluation split. Protocol "finetune", on the trained encoder only; settings
eval.finetune.fractions (empty: skipped), .epochs, .batch_size, .lr_backbone, .lr_head,
.weight_decay, and its views' .crop_scale and .flip_prob.
"""
from __future__ import annotations

from bt_jax import progress
from bt_jax.evals import classifier
from bt_jax.evals.common import Context, Protocol, Representation, label_subset, need
from bt_jax.evals.linear_sgd import check_views

# The paper's B.2: 1% and 10% of the labels, 20 epochs.
DEFAULTS = {"fractions": (0.01, 0.1), "epochs": 20, "batch_size": 256, "lr_backbone": 0.005,
            "lr_head": 0.5, "weight_decay": 0.0, "crop_scale": (0.08, 1.0), "flip_prob": 0.5}


def head_config(cfg, seed: int) -> classifier.HeadConfig:
    """The fine-tuning's settings from eval.finetune."""
    return classifier.HeadConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                                 lr_head=cfg.lr_head, lr_backbone=cfg.lr_backbone,
                                 weight_decay=cfg.weight_decay, crop_scale=tuple(cfg.crop_scale),
                                 flip_prob=cfg.flip_prob, finetune=True, seed=seed)


def run(ctx: Context, rep: Representation, cfg) -> dict:
    """{"semi_1pct_top1", "semi_1pct_top5", "semi_1pct_examples", ...}: one set per
    fraction of eval.finetune.fractions, each subset drawn by the run's seed."""
    labelled = ctx.labelled
    out = {}
    for fraction in cfg.fractions:
        subset = label_subset(labelled.labels, fraction, ctx.seed)
        ticker = progress.Ticker(f"fine-tuning on {100 * fraction:g}% of the labels "
                                 f"({len(subset):,} images)", cfg.epochs, "epochs",
                                 every_s=10)
        r = classifier.train_and_test(
            rep.encode, rep.variables, (labelled.images, labelled.labels),
            (ctx.test.images, ctx.test.labels), labelled.num_classes,
            head_config(cfg, ctx.seed), image_size=ctx.image_size,
            mean=ctx.stats[0], std=ctx.stats[1], subset=subset, on_epoch=ticker.update)
        name = f"semi_{100 * fraction:g}pct"
        out[f"{name}_top1"], out[f"{name}_top5"] = r["top1"], r["top5"]
        out[f"{name}_examples"] = int(len(subset))
    return out


def check_settings(cfg) -> None:
    """eval.finetune: fractions in (0, 1], epochs >= 0, positive batch and rates, views."""
    need(all(0.0 < f <= 1.0 for f in cfg.fractions),
         f"eval.finetune.fractions must be fractions in (0, 1]; got {tuple(cfg.fractions)}.")
    need(cfg.epochs >= 0, f"eval.finetune.epochs must be >= 0; got {cfg.epochs}.")
    need(cfg.batch_size > 0 and cfg.lr_backbone >= 0 and cfg.lr_head > 0
         and cfg.weight_decay >= 0, "eval.finetune.batch_size and .lr_head must be positive, "
         ".lr_backbone and .weight_decay >= 0.")
    check_views(cfg, "eval.finetune")


PROTOCOL = Protocol(
    name="finetune", run=run, wanted=lambda cfg: len(cfg.fractions) > 0, baselines=False,
    title=lambda cfg: f"fine-tuning on {len(cfg.fractions)} label fraction(s)",
    defaults=DEFAULTS, check=check_settings)
