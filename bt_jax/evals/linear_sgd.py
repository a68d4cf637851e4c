"""The paper's linear probe (Appendix B.1): a linear head trained by SGD on augmented
views of the frozen backbone (`classifier.train_and_test`). Protocol "linear_sgd";
settings eval.linear_epochs (0: skipped), eval.linear_batch_size, eval.linear_lr,
eval.linear_weight_decay, eval.linear_crop_scale, eval.linear_flip_prob.
"""
from __future__ import annotations

from bt_jax import progress
from bt_jax.evals import classifier
from bt_jax.evals.common import Context, Protocol, Representation, percent


def head_config(eval_cfg, seed: int) -> classifier.HeadConfig:
    """The head's training settings from config.eval."""
    e = eval_cfg
    return classifier.HeadConfig(epochs=e.linear_epochs, batch_size=e.linear_batch_size,
                                 lr_head=e.linear_lr, weight_decay=e.linear_weight_decay,
                                 crop_scale=tuple(e.linear_crop_scale),
                                 flip_prob=e.linear_flip_prob, seed=seed)


def run(ctx: Context, rep: Representation) -> dict:
    """{"linear_sgd_top1", "linear_sgd_top5"} of one representation."""
    e = ctx.config.eval
    ticker = progress.Ticker(f"{rep.label}: linear probe (SGD on augmented views)",
                             e.linear_epochs, "epochs", every_s=10)
    sgd = classifier.train_and_test(
        rep.encode, rep.variables, (ctx.train.images, ctx.train.labels),
        (ctx.test.images, ctx.test.labels), ctx.train.num_classes,
        head_config(e, ctx.config.seed), image_size=ctx.config.data.image_size,
        mean=ctx.stats[0], std=ctx.stats[1], on_epoch=ticker.update)
    ticker.done(percent(sgd))
    return {"linear_sgd_top1": sgd["top1"], "linear_sgd_top5": sgd["top5"]}


PROTOCOL = Protocol(name="linear_sgd", title=lambda e: f"linear probe (SGD, {e.linear_epochs} "
                    "epochs)", run=run, wanted=lambda e: e.linear_epochs > 0)
