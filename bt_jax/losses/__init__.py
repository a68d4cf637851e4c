"""Self-supervised objectives as pure functions of two views' embeddings, and the registry
that `loss.kind` names.

Everything here is a pure function of arrays: no Flax state and no TensorFlow, so it works
under `jit`, `grad`, `vmap` and `shard_map`. Inside `shard_map`, pass the mesh axis as
`axis_name`: the value and the gradients then equal those of the global batch on one
device.

A new objective is one module with an `OBJECTIVE = Objective(name, fn, progress, curves)`
(see `common.Objective`) and one line in OBJECTIVES below (`bt_jax.registry`); the
trainer, its progress line, metrics.jsonl, TensorBoard and training_curves.png take its
scalars from it.
"""
from bt_jax.losses.barlow_twins import (CORRELATION_PATHS, NORMALIZATIONS, REDUNDANCY_MODES,
                                        barlow_twins_loss, barlow_twins_terms,
                                        choose_correlation_path, correlation_of_standardized,
                                        cross_correlation, normalize, off_diagonal_term,
                                        on_diagonal_term, standardize, standardize_features,
                                        sum_squared_correlation_gram)
from bt_jax.losses.common import Objective
from bt_jax.losses.info_nce import info_nce_loss
from bt_jax.losses.vicreg import vicreg_loss, vicreg_terms
from bt_jax.registry import Registry

OBJECTIVES = Registry("objective", "loss.kind", {
    "barlow_twins": "bt_jax.losses.barlow_twins:OBJECTIVE",
    "info_nce": "bt_jax.losses.info_nce:OBJECTIVE",
    "vicreg": "bt_jax.losses.vicreg:OBJECTIVE",
}, home="bt_jax/losses/__init__.py")


def get_objective(kind: str) -> Objective:
    """The objective registered as `kind` (config's loss.kind); ConfigError (a ValueError)
    naming the registered ones otherwise."""
    return OBJECTIVES.get(kind)
