"""The network a config describes: the BarlowTwins module of config.model, its initial
variables, and the backbone's share of them."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from bt_jax.models.barlow_twins import BarlowTwins
from bt_jax.models.resnet import make_backbone

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(config: ml_collections.ConfigDict, axis_name: Optional[str] = None) -> BarlowTwins:
    """The BarlowTwins network of config.model; axis_name for cross-replica BatchNorm."""
    dtype = DTYPES[config.model.dtype]
    backbone = make_backbone(config.model.backbone, stem=config.model.stem,
                             width=config.model.width,
                             zero_init_residual=config.model.zero_init_residual,
                             axis_name=axis_name, dtype=dtype,
                             conv_impl=config.model.conv_impl)
    return BarlowTwins(backbone=backbone, projector_dims=tuple(config.model.projector_dims),
                       projector_bn=config.model.projector_bn,
                       predictor_dims=tuple(config.model.predictor_dims),
                       axis_name=axis_name, dtype=dtype,
                       projector_init=config.model.projector_init)


# XLA options for one-off programs on the CPU: without LLVM's optimisation passes, the
# initialiser of a ResNet-18 compiles in ~3 s instead of ~17 s on a 2-core CPU, and its
# values do not change (it runs once, in milliseconds either way).
_ONE_OFF_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: BarlowTwins, rng: jax.Array, image_size: int) -> dict:
    """{"params", "batch_stats"} of the model, initialised on a [2, S, S, 3] dummy batch.

    One jitted program. Run eagerly, every initialiser and layer of the dummy forward pass
    compiles on its own (a ResNet-18 took ~26 s that way on a 2-core CPU).
    """
    def init(key):
        x = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
        variables = model.init(key, x, train=False)
        return {"params": variables["params"], "batch_stats": variables["batch_stats"]}

    if isinstance(rng, jax.core.Tracer):     # inside a user's jit or eval_shape
        return init(rng)
    options = _ONE_OFF_CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(init).lower(rng).compile(compiler_options=options)(rng)


def backbone_variables(variables: dict) -> dict:
    """{"params", "batch_stats"} of the backbone alone, from the full model's variables."""
    return {"params": variables["params"]["backbone"],
            "batch_stats": variables["batch_stats"]["backbone"]}
