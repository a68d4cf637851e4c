"""What the two views are: the augmentation settings shared by the host (tf) and device
(JAX) implementations, and the evaluation view. No TensorFlow here. The layout of the
batches that carry them to the train step is `bt_jax.data.layout`'s.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from bt_jax.errors import ConfigError


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
            raise ConfigError(f"data.augment.crop_scale must satisfy 0 < lo <= hi <= 1; got "
                              f"{self.crop_scale}.")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"data.augment.crop_ratio must be 0 < lo <= hi; got "
                              f"{self.crop_ratio}.")
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"data.augment.{name} is a probability and must be in [0, "
                                  f"1]; got {p}.")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"data.augment.blur_sigma must satisfy 0 < lo <= hi; got "
                              f"{self.blur_sigma}.")
        if self.blur_prob > 0 and self.image_size <= gaussian_kernel_size(self.blur_sigma[1]) // 2:
            raise ConfigError(
                f"data.image_size {self.image_size} is too small for a blur with sigma up to "
                f"{self.blur_sigma[1]}: lower data.augment.blur_sigma or set "
                "data.augment.blur_prob to 0.")
        for name in ("brightness", "contrast", "saturation"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"data.augment.{name} is a jitter strength and must be >= 0; "
                                  f"got {getattr(self, name)}.")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"data.augment.hue must be in [0, 0.5]; got {self.hue}.")


def view_configs(data_cfg) -> tuple[ViewConfig, ViewConfig]:
    """The two views' augmentation settings from config.data (image_size, augment.*)."""
    aug = data_cfg.augment

    def view(k: int) -> ViewConfig:
        return ViewConfig(
            image_size=data_cfg.image_size,
            crop_scale=tuple(aug.crop_scale), crop_ratio=tuple(aug.crop_ratio),
            flip_prob=aug.flip_prob, jitter_prob=aug.jitter_prob,
            brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
            hue=aug.hue, grayscale_prob=aug.grayscale_prob,
            blur_prob=aug.blur_prob[k], blur_sigma=tuple(aug.blur_sigma),
            solarize_prob=aug.solarize_prob[k])

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
