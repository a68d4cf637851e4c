"""The pretrained backbone a run leaves in its workdir, loaded in one call.

A finished run writes `backbone.msgpack` (`flax.serialization.to_bytes` of the backbone's
{"params", "batch_stats"}) beside `config.json`. The file needs nothing of bt_jax to read:
`flax.serialization.msgpack_restore(open(path, "rb").read())` gives the nested dict of
arrays. `load_backbone` also rebuilds the Flax module from config.json's model fields:

    backbone, variables = load_backbone("runs/demo")
    features = backbone.apply(variables, images, train=False)   # [N, F]

images: float32 [N, S, S, 3], normalised as in pretraining (mean and std of results.json's
run: the train split's channel statistics, or ImageNet's for streamed sources).
"""
from __future__ import annotations

import json
import os

import flax.linen as nn
import flax.serialization

from bt_jax.config import ConfigError
from bt_jax.models import make_backbone

BACKBONE_FILE = "backbone.msgpack"


def load_backbone(workdir: str) -> tuple[nn.Module, dict]:
    """(backbone module, {"params", "batch_stats"}) of a run's exported backbone.

    The module is built as the run built it (model.backbone, stem, width,
    zero_init_residual; float32 compute, no cross-replica axis), ready for `apply`.
    """
    path = os.path.join(workdir, BACKBONE_FILE)
    config_path = os.path.join(workdir, "config.json")
    for p in (path, config_path):
        if not os.path.exists(p):
            raise ConfigError(f"{p!r} does not exist: {workdir!r} is not a finished run "
                              f"(a run writes {BACKBONE_FILE} and config.json at its end).")
    with open(config_path) as f:
        model = json.load(f)["model"]
    backbone = make_backbone(model["backbone"], stem=model["stem"], width=model["width"],
                             zero_init_residual=model["zero_init_residual"],
                             conv_impl=model.get("conv_impl", "auto"))
    with open(path, "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    return backbone, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
