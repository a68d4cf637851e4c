"""Semi-supervised fine-tuning (the paper's Appendix B.2): backbone and a linear head
trained together on each class-balanced label fraction of the train split, tested on the
evaluation split. Protocol "finetune", on the trained encoder only; settings
eval.semi_fractions (empty: skipped), eval.semi_epochs, eval.semi_batch_size,
eval.semi_lr_backbone, eval.semi_lr_head, eval.semi_weight_decay, and the linear probe's
crop and flip.
"""
from __future__ import annotations

from bt_jax import progress
from bt_jax.evals import classifier
from bt_jax.evals.common import Context, Protocol, Representation, label_subset, percent


def head_config(eval_cfg, seed: int) -> classifier.HeadConfig:
    """The fine-tuning's settings from config.eval."""
    e = eval_cfg
    return classifier.HeadConfig(epochs=e.semi_epochs, batch_size=e.semi_batch_size,
                                 lr_head=e.semi_lr_head, lr_backbone=e.semi_lr_backbone,
                                 weight_decay=e.semi_weight_decay,
                                 crop_scale=tuple(e.linear_crop_scale),
                                 flip_prob=e.linear_flip_prob, finetune=True, seed=seed)


def run(ctx: Context, rep: Representation) -> dict:
    """{"semi_1pct_top1", "semi_1pct_top5", "semi_1pct_examples", ...}: one set per
    fraction of eval.semi_fractions, each subset drawn by config.seed."""
    config, labelled = ctx.config, ctx.labelled
    out = {}
    for fraction in config.eval.semi_fractions:
        subset = label_subset(labelled.labels, fraction, config.seed)
        ticker = progress.Ticker(f"fine-tuning on {100 * fraction:g}% of the labels "
                                 f"({len(subset):,} images)", config.eval.semi_epochs,
                                 "epochs", every_s=10)
        r = classifier.train_and_test(
            rep.encode, rep.variables, (labelled.images, labelled.labels),
            (ctx.test.images, ctx.test.labels), labelled.num_classes,
            head_config(config.eval, config.seed), image_size=config.data.image_size,
            mean=ctx.stats[0], std=ctx.stats[1], subset=subset, on_epoch=ticker.update)
        ticker.done(percent(r))
        name = f"semi_{100 * fraction:g}pct"
        out[f"{name}_top1"], out[f"{name}_top5"] = r["top1"], r["top5"]
        out[f"{name}_examples"] = int(len(subset))
    return out


PROTOCOL = Protocol(
    name="finetune", run=run, wanted=lambda e: len(e.semi_fractions) > 0, baselines=False,
    title=lambda e: f"fine-tuning on {len(e.semi_fractions)} label fraction(s)")
