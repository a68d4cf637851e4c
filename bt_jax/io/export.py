"""The pretrained backbone a run leaves in its workdir, and its preprocessing, in one call.

A finished run writes, beside `config.json`:
- `backbone.msgpack`: `flax.serialization.to_bytes` of the backbone's {"params",
  "batch_stats"}. It needs nothing of bt_jax to read:
  `flax.serialization.msgpack_restore(open(path, "rb").read())` gives the nested dict.
- `backbone.json`: what feeding it needs, as plain JSON:
  {"image_size": S, "mean": [3], "std": [3], "input": "...", "num_features": F,
   "model": {"backbone", "stem", "width", "zero_init_residual", "conv_impl"}, "dataset",
   "step": the training step of the weights, "digest": `weights_digest` of them}.
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
import hashlib
import json
from typing import Callable, Optional

import flax.linen as nn
import flax.serialization
import jax
import numpy as np

from bt_jax.io import run_dir, storage
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


def weights_digest(variables: dict) -> str:
    """"sha256:<hex>" of a tree of arrays: every leaf's path, dtype, shape and bytes, in
    sorted path order. The same weights give the same digest whether they come from a
    checkpoint or from backbone.msgpack; results.json names its weights by it."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return f"sha256:{h.hexdigest()}"


def weights_record(file: str, step: Optional[int], variables: dict) -> dict:
    """results.json's "weights": {"file" (backbone.msgpack, checkpoints/<step> or a path),
    "step" (None: not known), "digest" (`weights_digest`)}."""
    return {"file": file, "step": step, "digest": weights_digest(variables)}


def describe_weights(weights: dict) -> str:
    """"backbone.msgpack (step 8)", "checkpoints/6 (step 6)" or a file's path."""
    step = weights.get("step")
    return weights["file"] + ("" if step is None else f" (step {step})")


def write_backbone(workdir: str, variables: dict, model_cfg, stats, *, image_size: int,
                   dataset: str, step: Optional[int] = None,
                   digest: Optional[str] = None) -> None:
    """Writes backbone.msgpack (the backbone's {"params", "batch_stats"}) and backbone.json
    (its preprocessing and the model fields of config.model, `model_cfg`) into workdir,
    each atomically.

    stats: (mean [3], std [3]) the run normalised its images with; image_size: the
    pretraining views' (config.data.image_size); dataset: config.data.name; step: the
    training step the weights are of; digest: their `weights_digest`, if already known."""
    mean, std = (np.asarray(v, np.float64).reshape(-1).tolist() for v in stats)
    model = {k: model_cfg[k] for k in MODEL_FIELDS}
    name, *rest = MODEL_FIELDS       # "backbone", then its keyword arguments
    num_features = make_backbone(model[name], **{k: model[k] for k in rest}).num_features
    meta = {"image_size": int(image_size), "mean": mean, "std": std,
            "input": INPUT_LAYOUT, "num_features": num_features, "model": model,
            "dataset": dataset, "step": step,
            "digest": digest or weights_digest(variables)}
    run_dir.atomic_write(run_dir.path(workdir, BACKBONE_FILE),
                         flax.serialization.to_bytes(variables))
    run_dir.atomic_write(run_dir.path(workdir, PREPROCESSING_FILE),
                         (json.dumps(meta, indent=2) + "\n").encode())


def _require(path: str, workdir: str) -> None:
    if not storage.exists(path):
        raise ConfigError(f"{path!r} does not exist: {workdir!r} is not a finished run (a run "
                          f"writes {BACKBONE_FILE}, {PREPROCESSING_FILE} and config.json at "
                          "its end).")


def read_variables(path: str) -> dict:
    """{"params", "batch_stats"} of a backbone.msgpack file; ConfigError (one line) where
    it is truncated or is not one."""
    try:
        variables = flax.serialization.msgpack_restore(storage.read_bytes(path))
    except Exception as e:  # pylint: disable=broad-except  # msgpack's errors share no base
        raise ConfigError(f"{path!r} cannot be read: it is truncated or not a msgpack file "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:80]}). Export it "
                          "again from a checkpoint (python -m bt_jax.evaluate reads the "
                          "checkpoints), or copy it again.") from None
    if not isinstance(variables, dict) or "params" not in variables:
        raise ConfigError(f"{path!r} holds no {{'params', 'batch_stats'}} variables.")
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def exported_step(workdir: str) -> Optional[int]:
    """The training step of the workdir's backbone.msgpack (backbone.json's "step"); None
    where backbone.json is missing, unreadable or older than that field."""
    try:
        step = run_dir.read_json_object(run_dir.path(workdir, PREPROCESSING_FILE)).get("step")
    except ConfigError:
        return None
    return step if isinstance(step, int) else None


def load_backbone(workdir: str) -> tuple[nn.Module, dict]:
    """(backbone module, {"params", "batch_stats"}) of a run's exported backbone.

    The module is built as the run built it (model.backbone, stem, width,
    zero_init_residual; float32 compute, no cross-replica axis), ready for `apply` on
    images that `load_preprocessing` prepared. A missing, truncated or corrupt file is one
    ConfigError line.
    """
    path = run_dir.path(workdir, BACKBONE_FILE)
    config_path = run_dir.path(workdir, run_dir.CONFIG)
    for p in (path, config_path):
        _require(p, workdir)
    model = run_dir.read_json_object(config_path).get("model")
    if not isinstance(model, dict) or not all(k in model for k in MODEL_FIELDS[:4]):
        raise ConfigError(f"{config_path!r} has no model.* fields: it is not a run's config.")
    backbone = make_backbone(model["backbone"], stem=model["stem"], width=model["width"],
                             zero_init_residual=model["zero_init_residual"],
                             conv_impl=model.get("conv_impl", "auto"))
    return backbone, read_variables(path)


def load_preprocessing(workdir: str) -> Preprocessing:
    """The run's preprocessing (image size, channel mean and std) from backbone.json."""
    path = run_dir.path(workdir, PREPROCESSING_FILE)
    _require(path, workdir)
    meta = run_dir.read_json_object(path)
    return Preprocessing(int(meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"]))


def load_encoder(workdir: str) -> Callable[[np.ndarray], jax.Array]:
    """A function uint8 [N, S, S, C] images -> [N, F] float32 features: the run's
    preprocessing, then its backbone in inference mode (running BatchNorm statistics)."""
    backbone, variables = load_backbone(workdir)
    preprocess = load_preprocessing(workdir)
    apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    return lambda images: apply(variables, preprocess(images))
