"""Fields that moved, in one place: an old name in a recipe or on the command line is one
line naming the new one (`renamed_message`), and an old run's config.json is read in
today's layout (`translate_saved`). Nothing else of bt_jax keeps an old name."""
from __future__ import annotations

from bt_jax.config.tree import flatten, unflatten

# Fields that moved, old dotted name -> new.
RENAMED = {
    "eval.fast_l2_grid": "eval.linear_fast.l2_grid",
    "eval.fast_holdout_fraction": "eval.linear_fast.holdout_fraction",
    "eval.fast_max_iter": "eval.linear_fast.max_iter", "eval.knn_k": "eval.knn.k",
    "eval.knn_temperature": "eval.knn.temperature",
    "eval.knn_bank_chunk": "eval.knn.bank_chunk",
    "eval.linear_epochs": "eval.linear_sgd.epochs",
    "eval.linear_batch_size": "eval.linear_sgd.batch_size",
    "eval.linear_lr": "eval.linear_sgd.lr",
    "eval.linear_weight_decay": "eval.linear_sgd.weight_decay",
    "eval.linear_crop_scale": "eval.linear_sgd.crop_scale",
    "eval.linear_flip_prob": "eval.linear_sgd.flip_prob",
    "eval.semi_fractions": "eval.finetune.fractions",
    "eval.semi_epochs": "eval.finetune.epochs",
    "eval.semi_batch_size": "eval.finetune.batch_size",
    "eval.semi_lr_backbone": "eval.finetune.lr_backbone",
    "eval.semi_lr_head": "eval.finetune.lr_head",
    "eval.semi_weight_decay": "eval.finetune.weight_decay",
    "eval.online_probe": "monitor.online_probe",
    "eval.online_probe_lr": "monitor.online_probe_lr",
    "eval.monitor_every_epochs": "monitor.knn_every_epochs",
    "eval.diagnostics_every_steps": "monitor.diagnostics_every_steps",
    "loss.temperature": "loss.info_nce.temperature",
}
# Before eval.finetune had its own views, fine-tuning used the linear probe's.
_ALSO_SET_BY_OLD = {"eval.linear_crop_scale": "eval.finetune.crop_scale",
                    "eval.linear_flip_prob": "eval.finetune.flip_prob"}
# eval.linear_protocol named the probe without its protocol's prefix.
OLD_LINEAR_PROTOCOLS = {"fast": "linear_fast", "sgd": "linear_sgd"}


def renamed_message(old: str) -> str:
    """One line: where an old field lives now."""
    return (f"{old} is now {RENAMED[old]}: write --config.{RENAMED[old]}=... (or "
            f"c.{RENAMED[old]} = ... in a recipe).")


def translate_saved(saved: dict) -> dict:
    """A run's config.json of an earlier layout in today's: every old field under its new
    name (the fine-tuning's views from the linear probe's, as they were used), and
    eval.linear_protocol's old values ("fast", "sgd") as protocol names. A config.json of
    today's layout comes back unchanged."""
    flat = flatten(saved)
    out = {}
    for name, value in flat.items():
        if name in RENAMED:
            out.setdefault(RENAMED[name], value)
            if name in _ALSO_SET_BY_OLD:
                out.setdefault(_ALSO_SET_BY_OLD[name], value)
        else:
            out[name] = value
    protocol = out.get("eval.linear_protocol")
    if protocol in OLD_LINEAR_PROTOCOLS:
        out["eval.linear_protocol"] = OLD_LINEAR_PROTOCOLS[protocol]
    return unflatten(out)
