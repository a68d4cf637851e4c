"""The pretrained backbone a run leaves in its workdir, and its preprocessing, in one call.

A finished run writes, beside `config.json`:
- `backbone.msgpack`: `flax.serialization.to_bytes` of the backbone's {"params",
  "batch_stats"}. It needs nothing of bt_jax to read:
  `flax.serialization.msgpack_restore(open(path, "rb").read())` gives the nested dict.
- `backbone.json`: what feeding it needs, as plain JSON:
  {"image_size": S, "mean": [3], "std": [3], "input": "...", "num_features": F,
   "model": {"backbone", "stem", "width", "zero_init_residual", "conv_impl"}, "dataset"}.
  Images go in as float32 [N, S, S, 3], RGB (grayscale repeated to 3 channels), scaled to
  [0, 1], then normalised per channel as (x - mean) / std with the run's own mean and std
  (the pretraining split's channel statistics for in-memory datasets; torchvision's
  ImageNet values for streamed ones).

    backbone, variables = load_backbone("runs/demo")
    preprocess = load_preprocessing("runs/demo")       # uint8 [N, S, S, C] -> float32
    features = backbone.apply(variables, preprocess(images), train=False)   # [N, F]
    # or, all in one: encode = load_encoder("runs/demo"); features = encode(images)
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import flax.linen as nn
import flax.serialization
import jax
import numpy as np

from bt_jax import run_dir
from bt_jax.data.views import normalize
from bt_jax.errors import ConfigError
from bt_jax.models import make_backbone

BACKBONE_FILE = run_dir.BACKBONE
PREPROCESSING_FILE = run_dir.PREPROCESSING
INPUT_LAYOUT = ("float32 [N, S, S, 3] RGB (grayscale repeated to 3 channels) scaled to [0, 1], "
                "then (x - mean) / std per channel")
MODEL_FIELDS = ("backbone", "stem", "width", "zero_init_residual", "conv_impl")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What pretraining fed the backbone: image_size S, per-channel mean and std ([3])."""
    image_size: int
    mean: tuple
    std: tuple

    def __call__(self, images) -> np.ndarray:
        """uint8 [N, S, S, C] (C = 1 or 3; or float in [0, 1]) -> normalised float32
        [N, S, S, 3]."""
        x = np.asarray(images)
        size = (self.image_size, self.image_size)
        if x.ndim != 4 or x.shape[1:3] != size or x.shape[-1] not in (1, 3):
            raise ValueError(
                f"The backbone was pretrained on [N, {self.image_size}, {self.image_size}, 3] "
                f"images (channels last; 1 channel is repeated); got shape {x.shape}. Resize "
                f"(shorter side to {self.image_size}, centre square) and transpose first.")
        return normalize(x, self.mean, self.std)


def write_backbone(workdir: str, variables: dict, model_cfg, stats, *, image_size: int,
                   dataset: str) -> None:
    """Writes backbone.msgpack (the backbone's {"params", "batch_stats"}) and backbone.json
    (its preprocessing and the model fields of config.model, `model_cfg`) into workdir,
    each atomically.

    stats: (mean [3], std [3]) the run normalised its images with; image_size: the
    pretraining views' (config.data.image_size); dataset: config.data.name."""
    mean, std = (np.asarray(v, np.float64).reshape(-1).tolist() for v in stats)
    model = {k: model_cfg[k] for k in MODEL_FIELDS}
    name, *rest = MODEL_FIELDS       # "backbone", then its keyword arguments
    num_features = make_backbone(model[name], **{k: model[k] for k in rest}).num_features
    meta = {"image_size": int(image_size), "mean": mean, "std": std,
            "input": INPUT_LAYOUT, "num_features": num_features, "model": model,
            "dataset": dataset}
    run_dir.atomic_write(os.path.join(workdir, BACKBONE_FILE),
                         flax.serialization.to_bytes(variables))
    run_dir.atomic_write(os.path.join(workdir, PREPROCESSING_FILE),
                         (json.dumps(meta, indent=2) + "\n").encode())


def _require(path: str, workdir: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"{path!r} does not exist: {workdir!r} is not a finished run (a run "
                          f"writes {BACKBONE_FILE}, {PREPROCESSING_FILE} and config.json at "
                          "its end).")


def load_backbone(workdir: str) -> tuple[nn.Module, dict]:
    """(backbone module, {"params", "batch_stats"}) of a run's exported backbone.

    The module is built as the run built it (model.backbone, stem, width,
    zero_init_residual; float32 compute, no cross-replica axis), ready for `apply` on
    images that `load_preprocessing` prepared.
    """
    path = os.path.join(workdir, BACKBONE_FILE)
    config_path = run_dir.path(workdir, run_dir.CONFIG)
    for p in (path, config_path):
        _require(p, workdir)
    with open(config_path) as f:
        model = json.load(f)["model"]
    backbone = make_backbone(model["backbone"], stem=model["stem"], width=model["width"],
                             zero_init_residual=model["zero_init_residual"],
                             conv_impl=model.get("conv_impl", "auto"))
    with open(path, "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    return backbone, {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def load_preprocessing(workdir: str) -> Preprocessing:
    """The run's preprocessing (image size, channel mean and std) from backbone.json."""
    path = os.path.join(workdir, PREPROCESSING_FILE)
    _require(path, workdir)
    with open(path) as f:
        meta = json.load(f)
    return Preprocessing(int(meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"]))


def load_encoder(workdir: str) -> Callable[[np.ndarray], jax.Array]:
    """A function uint8 [N, S, S, C] images -> [N, F] float32 features: the run's
    preprocessing, then its backbone in inference mode (running BatchNorm statistics)."""
    backbone, variables = load_backbone(workdir)
    preprocess = load_preprocessing(workdir)
    apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    return lambda images: apply(variables, preprocess(images))
