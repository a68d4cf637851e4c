"""ResNet-18/34/50 backbones in torchvision's layout (He et al., CVPR 2016).

Module names follow torchvision one-to-one so weights map across:
torchvision `layer2.1.conv1.weight` <-> params["layer2_1"]["conv1"]["kernel"]
(kernel transposed OIHW -> HWIO), `layer2.0.downsample.0` <-> "downsample_conv",
`layer2.0.downsample.1` <-> "downsample_bn", `bn1.running_mean` <-> batch_stats["bn1"]["mean"].
Padding is explicit and symmetric, as in PyTorch, not "SAME". The stride of a
bottleneck sits on its 3x3 convolution (torchvision's "ResNet v1.5").

Input: [N, H, W, C] images. Output: [N, F] pooled features (no fc head), with
F = 512 * width (ResNet-18/34) or 2048 * width (ResNet-50).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence, Type

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models.conv import Conv

STEMS = ("imagenet", "cifar", "cifar_pool")
# Downsampling of each stem before the first stage (conv stride x max-pool stride).
STEM_STRIDES = {"imagenet": 4, "cifar": 1, "cifar_pool": 2}


def min_image_size(stem: str, num_stages: int = 4) -> int:
    """The input pixels one last-stage pixel spans per side (stages after the first halve
    the resolution): 32 for the ImageNet stem, 16 for "cifar_pool", 8 for "cifar"."""
    return STEM_STRIDES[stem] * 2 ** (num_stages - 1)


def stem_minimums() -> str:
    """"'imagenet': 32 px, 'cifar': 8 px, ..." for error messages."""
    return ", ".join(f"{k!r}: {min_image_size(k)} px" for k in STEMS)

# torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _ResidualBlock(nn.Module):
    """Fields and layer factories shared by BasicBlock and Bottleneck."""
    features: int
    strides: int = 1
    zero_init_residual: bool = True
    axis_name: Any = None
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def _layers(self, train: bool):
        """(conv, norm, scale init of the block's last BN) for this block's settings."""
        conv = functools.partial(Conv, kernel_init=conv_init, impl=self.conv_impl,
                                 dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        return conv, norm, last_scale


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm, last_scale = self._layers(train)
        y = conv(self.features, 3, self.strides, padding=1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, 3, padding=1, name="conv2")(y)
        y = norm(scale_init=last_scale, name="bn2")(y)
        return nn.relu(y + _shortcut(self, x, self.features, conv, norm))


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (strided) -> 1x1 convolutions with a residual connection (ResNet-50+)."""
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        conv, norm, last_scale = self._layers(train)
        out = self.features * self.expansion
        y = conv(self.features, 1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, 3, self.strides, padding=1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(out, 1, name="conv3")(y)
        y = norm(scale_init=last_scale, name="bn3")(y)
        return nn.relu(y + _shortcut(self, x, out, conv, norm))


def _shortcut(block: nn.Module, x, out_features: int, conv, norm):
    """Identity, or 1x1 strided conv + BN where the shape changes (torchvision's downsample)."""
    if x.shape[-1] == out_features and block.strides == 1:
        return x
    y = conv(out_features, 1, block.strides, name="downsample_conv", parent=block)(x)
    return norm(name="downsample_bn", parent=block)(y)


class ResNet(nn.Module):
    """A torchvision-layout ResNet backbone without its classification head.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block_cls: BasicBlock or Bottleneck.
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "cifar" (3x3/1 conv, no pool) or
        "cifar_pool" (3x3/1 conv + 2x2/2 max-pool: every stage at half the "cifar"
        resolution, a quarter of its cost; for 28-64 px images on small budgets).
      width: channel multiplier (1.0 is the standard network; e.g. 0.25 for tiny runs).
      zero_init_residual: zero-init the last BN scale of each block (Goyal et al. 2017).
      axis_name: mesh axis for cross-replica BatchNorm statistics, or None.
      dtype: computation dtype (parameters stay float32).
      conv_impl: how the convolutions run ("auto" | "xla" | "im2col" | "dense", see
        `bt_jax.models.conv`): the same function and parameters, different speed.
    """
    stage_sizes: Sequence[int]
    block_cls: Type[nn.Module]
    stem: str = "imagenet"
    width: float = 1.0
    zero_init_residual: bool = True
    axis_name: Any = None
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @property
    def num_features(self) -> int:
        """F, the size of the pooled feature vector."""
        return self._channels(len(self.stage_sizes) - 1) * self.block_cls.expansion

    def _channels(self, stage: int) -> int:
        return max(1, int(round(64 * self.width))) * 2 ** stage

    @property
    def total_stride(self) -> int:
        """How many input pixels one pixel of the last stage spans per side: 32 for the
        ImageNet stem, 16 for "cifar_pool", 8 for "cifar" (with 4 stages)."""
        return min_image_size(self.stem, len(self.stage_sizes))

    def check_input(self, shape: Sequence[int]) -> None:
        """Raises ValueError naming the fix if images of this shape cannot be fed."""
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}; got {self.stem!r}.")
        if not self.width > 0:
            raise ValueError(f"width must be positive (1.0: the standard network); got "
                             f"{self.width}.")
        if len(shape) != 4:
            raise ValueError(f"ResNet expects [N, H, W, C] images; got shape {tuple(shape)}.")
        _, h, w, c = shape
        if h in (1, 3) and c not in (1, 3):
            raise ValueError(
                f"ResNet expects channels-last [N, H, W, C] images; shape {tuple(shape)} looks "
                "channels-first (NCHW): pass x.transpose(0, 2, 3, 1).")
        if min(h, w) < self.total_stride:
            raise ValueError(
                f"Images of {h}x{w} px are too small for the {self.stem!r} stem: its network "
                f"reduces {self.total_stride}x{self.total_stride} px to one last-stage pixel. "
                "Upsample them, or use a stem that downsamples less "
                f"({stem_minimums()}).")

    @nn.compact
    def __call__(self, x, train: bool = True):
        """[N, H, W, C] images -> [N, F] features."""
        self.check_input(x.shape)
        x = x.astype(self.dtype)
        stem_channels = self._channels(0)
        k, stride = (7, 2) if self.stem == "imagenet" else (3, 1)
        x = Conv(stem_channels, k, stride, padding=k // 2, impl=self.conv_impl,
                 kernel_init=conv_init, dtype=self.dtype, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.axis_name, dtype=self.dtype, name="bn1")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "cifar_pool":
            x = nn.max_pool(x, (2, 2), (2, 2))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = self.block_cls(
                    features=self._channels(stage),
                    strides=2 if (stage > 0 and i == 0) else 1,
                    zero_init_residual=self.zero_init_residual,
                    axis_name=self.axis_name, dtype=self.dtype, conv_impl=self.conv_impl,
                    name=f"layer{stage + 1}_{i}")(x, train)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
