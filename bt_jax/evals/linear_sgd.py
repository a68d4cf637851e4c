"""The paper's linear probe (Appendix B.1): a linear head trained by SGD on augmented
views of the frozen backbone (`classifier.train_and_test`). Protocol "linear_sgd";
settings eval.linear_sgd.epochs (0: skipped), .batch_size, .lr, .weight_decay, and its
views' .crop_scale and .flip_prob.
"""
from __future__ import annotations

from bt_jax import progress
from bt_jax.evals import classifier
from bt_jax.evals.common import Context, Protocol, Representation, need

# The paper's B.1: 100 epochs, SGD momentum 0.9, lr 0.3, cosine, wd 1e-6, batch 256,
# random-resized-crop + flip views.
DEFAULTS = {"epochs": 100, "batch_size": 256, "lr": 0.3, "weight_decay": 1e-6,
            "crop_scale": (0.08, 1.0), "flip_prob": 0.5}


def head_config(cfg, seed: int) -> classifier.HeadConfig:
    """The head's training settings from eval.linear_sgd."""
    return classifier.HeadConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr_head=cfg.lr,
                                 weight_decay=cfg.weight_decay, crop_scale=tuple(cfg.crop_scale),
                                 flip_prob=cfg.flip_prob, seed=seed)


def run(ctx: Context, rep: Representation, cfg) -> dict:
    """{"linear_sgd_top1", "linear_sgd_top5"} of one representation."""
    ticker = progress.Ticker(f"{rep.label}: linear probe (SGD on augmented views)",
                             cfg.epochs, "epochs", every_s=10)
    sgd = classifier.train_and_test(
        rep.encode, rep.variables, (ctx.train.images, ctx.train.labels),
        (ctx.test.images, ctx.test.labels), ctx.train.num_classes,
        head_config(cfg, ctx.seed), image_size=ctx.image_size,
        mean=ctx.stats[0], std=ctx.stats[1], on_epoch=ticker.update)
    return {"linear_sgd_top1": sgd["top1"], "linear_sgd_top5": sgd["top5"]}


def check_views(cfg, section: str) -> None:
    """A head's views: crop_scale a (low, high) in (0, 1], flip_prob in [0, 1]."""
    low, high = cfg.crop_scale
    need(0 < low <= high <= 1, f"{section}.crop_scale must be (low, high) with "
         f"0 < low <= high <= 1; got {tuple(cfg.crop_scale)}.")
    need(0 <= cfg.flip_prob <= 1, f"{section}.flip_prob must be in [0, 1]; got "
         f"{cfg.flip_prob}.")


def check_settings(cfg) -> None:
    """eval.linear_sgd: epochs >= 0, a positive batch and rate, its views."""
    need(cfg.epochs >= 0, f"eval.linear_sgd.epochs must be >= 0 (0: off); got {cfg.epochs}.")
    need(cfg.batch_size > 0 and cfg.lr > 0 and cfg.weight_decay >= 0,
         "eval.linear_sgd.batch_size and .lr must be positive and .weight_decay >= 0; got "
         f"{cfg.batch_size}, {cfg.lr}, {cfg.weight_decay}.")
    check_views(cfg, "eval.linear_sgd")


PROTOCOL = Protocol(name="linear_sgd", title=lambda cfg: f"linear probe (SGD, {cfg.epochs} "
                    "epochs)", run=run, wanted=lambda cfg: cfg.epochs > 0,
                    defaults=DEFAULTS, check=check_settings)
