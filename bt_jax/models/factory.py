"""The network a config describes: the BarlowTwins module of config.model, its initial
variables, and the backbone's share of them."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from bt_jax.io import storage
from bt_jax.errors import ConfigError
from bt_jax.models.barlow_twins import BarlowTwins
from bt_jax.models.conv import CONV_IMPLS
from bt_jax.models.projector import LINEAR_INITS
from bt_jax.models.backbones import BACKBONES, make_backbone
from bt_jax.models.resnet import STEMS, min_image_size, stem_minimums

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# config.model: the network's settings, at the paper's values.
DEFAULTS = {
    "backbone": "resnet50",
    "stem": "imagenet",
    "width": 1.0,
    "projector_dims": (8192, 8192, 8192),
    "dtype": "float32",
    "conv_impl": "auto",         # "xla" | "im2col" | "dense": same result, other speed
    "zero_init_residual": True,
    "projector_bn": True,        # False: the paper's "no BN in projector" ablation
    "predictor_dims": (),        # e.g. (8192, 8192): a predictor on view A (ablation)
    # The projector's Linear init: "lecun" (Flax's default) or "torch" (PyTorch's nn.Linear
    # default, as FAIR's code has it: 1.73x smaller weights), for exact reproduction.
    "projector_init": "lecun",
    # Start from these weights (PyTorch's or bt_jax's: what `python -m bt_jax.convert`
    # reads): the backbone, and the projector where the file holds one of this shape.
    "init_from": "",
}


def check_settings(model_cfg) -> None:
    """ConfigError naming the field and the fix for a config.model value that cannot work."""

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    m = model_cfg
    need(m.backbone in BACKBONES, f"model.backbone must be one of {sorted(BACKBONES)}; got "
         f"{m.backbone!r}.")
    need(m.dtype in DTYPES, f"model.dtype must be one of {tuple(DTYPES)}; got {m.dtype!r}.")
    need(m.conv_impl in CONV_IMPLS, f"model.conv_impl must be one of {CONV_IMPLS}; got "
         f"{m.conv_impl!r}.")
    need(m.projector_init in LINEAR_INITS, f"model.projector_init must be one of "
         f"{tuple(LINEAR_INITS)}; got {m.projector_init!r}.")
    need(m.width > 0, f"model.width must be positive; got {m.width}.")
    need(len(m.projector_dims) > 0 and all(d > 0 for d in m.projector_dims),
         f"model.projector_dims must be positive widths; got {m.projector_dims}.")
    need(all(isinstance(d, int) for d in m.projector_dims),
         f"model.projector_dims must be a tuple of integer widths, e.g. (2048, 2048, 2048); "
         f"got {m.projector_dims!r}.")
    need(m.stem in STEMS, f"model.stem must be one of {STEMS}; got {m.stem!r}.")
    need(all(d > 0 for d in m.predictor_dims),
         f"model.predictor_dims must be positive widths or (); got {m.predictor_dims}.")
    need(not m.init_from or storage.isfile(m.init_from),
         f"model.init_from={m.init_from!r} does not exist: give a weights file "
         "(.pth / .pt / .safetensors / .msgpack), or '' to start from random weights.")


def check_image_size(model_cfg, image_size: int) -> None:
    """ConfigError if the stem reduces `image_size` px to less than one last-stage pixel."""
    smallest = min_image_size(model_cfg.stem)
    if image_size < smallest:
        raise ConfigError(
            f"data.image_size={image_size} is too small for model.stem={model_cfg.stem!r}: "
            f"its network reduces {smallest}x{smallest} px to one last-stage pixel. Raise "
            f"data.image_size to at least {smallest}, or use a stem that downsamples less "
            f"({stem_minimums()}).")


def create_model(model_cfg: ml_collections.ConfigDict,
                 axis_name: Optional[str] = None) -> BarlowTwins:
    """The BarlowTwins network of config.model (`model_cfg`); axis_name for cross-replica
    BatchNorm."""
    m = model_cfg
    dtype = DTYPES[m.dtype]
    backbone = make_backbone(m.backbone, stem=m.stem, width=m.width,
                             zero_init_residual=m.zero_init_residual,
                             axis_name=axis_name, dtype=dtype, conv_impl=m.conv_impl)
    return BarlowTwins(backbone=backbone, projector_dims=tuple(m.projector_dims),
                       projector_bn=m.projector_bn, predictor_dims=tuple(m.predictor_dims),
                       axis_name=axis_name, dtype=dtype, projector_init=m.projector_init)


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
