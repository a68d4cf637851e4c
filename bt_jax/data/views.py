"""What the two views are: the augmentation settings shared by the host (tf) and device
(JAX) implementations, and the layout of the batches that pass from the input pipeline to
the train step, which data.augment_on decides. No TensorFlow here.

Batch layouts (`batch_keys`), every array with leading dimension B_local:
- augment_on="host": {"view_a", "view_b": float32 [B, S, S, 3] normalised views,
  "index", "label": int32 [B]}; the step trains on them as they are.
- augment_on="device", in-memory split: {"image": uint8 [B, H, W, C], "index", "label",
  "epoch": int32 [B]}; `device_augment.make_view_fn` crops and augments on the device.
- augment_on="device", streamed split (files, TFDS): {"crop_a", "crop_b": uint8
  [B, S, S, 3] (decoded and cropped on the host), "index", "label", "epoch"}; the device
  does the rest.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from bt_jax.errors import ConfigError

AUGMENT_ON = ("host", "device")
VIEWS = ("view_a", "view_b")        # what the train step consumes
IMAGE = "image"                     # uncropped in-memory images, for on-device views
CROPS = ("crop_a", "crop_b")        # host crops of streamed images, for on-device views


def batch_keys(augment_on: str, gather_on_host: bool) -> tuple[str, ...]:
    """The keys of a pipeline batch (module docstring) for data.augment_on and a split that
    is (gather_on_host) or is not an in-memory array."""
    if augment_on == "host":
        return VIEWS + ("index", "label")
    return ((IMAGE,) if gather_on_host else CROPS) + ("index", "label", "epoch")


def batch_shapes(augment_on: str, gather_on_host: bool, batch: int, image_size: int,
                 channels: int = 3) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype name)} of a pipeline batch of `batch` rows in the layout of
    `batch_keys` (module docstring): what the train step (or the on-device augmentation
    ahead of it) receives. channels: C of an in-memory split's stored uint8 images (1 for
    grayscale sources), which only the "image" layout keeps."""
    shapes = {"index": ((batch,), "int32"), "label": ((batch,), "int32"),
              "epoch": ((batch,), "int32")}
    shapes.update({k: ((batch, image_size, image_size, 3), "float32") for k in VIEWS})
    shapes.update({k: ((batch, image_size, image_size, 3), "uint8") for k in CROPS})
    shapes[IMAGE] = ((batch, image_size, image_size, channels), "uint8")
    return {k: shapes[k] for k in batch_keys(augment_on, gather_on_host)}


def gaussian_kernel_size(max_sigma: float) -> int:
    """Odd kernel size covering +-3 sigma: 2 * ceil(3 * max_sigma) + 1."""
    return 2 * math.ceil(3 * max_sigma) + 1


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Augmentation strengths and probabilities for one view (config data.augment)."""
    image_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1; got {self.crop_scale}.")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must be 0 < lo <= hi; got {self.crop_ratio}.")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} is a probability and must be in [0, 1]; got {p}.")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"blur_sigma must satisfy 0 < lo <= hi; got {self.blur_sigma}.")
        if self.blur_prob > 0 and self.image_size <= gaussian_kernel_size(self.blur_sigma[1]) // 2:
            raise ConfigError(
                f"image_size {self.image_size} is too small for a blur with sigma up to "
                f"{self.blur_sigma[1]}: lower blur_sigma or set blur_prob to 0.")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue must be in [0, 0.5]; got {self.hue}.")


def view_configs(config) -> tuple[ViewConfig, ViewConfig]:
    """The two views' augmentation settings from config.data (augment.*)."""
    aug = config.data.augment

    def view(k: int) -> ViewConfig:
        return ViewConfig(
            image_size=config.data.image_size,
            crop_scale=tuple(aug.crop_scale), crop_ratio=tuple(aug.crop_ratio),
            flip_prob=aug.flip_prob, jitter_prob=aug.jitter_prob,
            brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
            hue=aug.hue, grayscale_prob=aug.grayscale_prob,
            blur_prob=aug.blur_prob[k], blur_sigma=tuple(aug.blur_sigma),
            solarize_prob=aug.solarize_prob[k])

    if config.data.augment_on not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on must be one of {AUGMENT_ON}; got "
                          f"{config.data.augment_on!r}.")
    return view(0), view(1)


def normalize(images, mean, std) -> np.ndarray:
    """The evaluation view, on the host: uint8 [N, H, W, C] (C = 1 or 3; or floats in
    [0, 1]) -> float32 [N, H, W, 3], grayscale repeated to 3 channels, scaled to [0, 1],
    then (x - mean) / std per channel (mean, std: [3]). What the probes, the kNN monitor
    and an exported encoder's preprocessing feed the backbone."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
