"""2-D convolution with three interchangeable implementations, and the Flax module using them.

All three compute the same cross-correlation as `jax.lax.conv_general_dilated` with NHWC
inputs, HWIO kernels and explicit symmetric padding (PyTorch's semantics), and differ only
in how XLA runs it:

- "xla": `lax.conv_general_dilated`, which cuDNN and the TPU compiler run well. On CPU, XLA
  lowers it to Eigen's spatial convolution, which is slow on the tiny maps of a ResNet's
  last stages at 28-32 px (about 5 GFLOP/s forward on 2x2 maps).
- "im2col": the kh * kw shifted (and strided) views of the padded input, concatenated on
  the channel axis, times the [kh * kw * Cin, Cout] kernel: one GEMM forward and two
  backward. Best on CPU for strided 1x1 layers and strided layers with tiny outputs.
- "dense": the whole convolution as one matrix from the flattened [H * W * Cin] input to
  the flattened [Ho * Wo * Cout] output (a block-Toeplitz matrix gathered from the
  kernel); the arithmetic of every tap that hits padding is skipped, not wasted. Best on
  CPU for maps of 2x2 pixels, where "xla" is slowest.

"auto" picks per layer from the static shapes: "xla" off the CPU, and on the CPU the rule
of `choose_conv_impl`, measured by experiments/bench_conv.py. Parameters are identical
whatever the implementation ("kernel", [kh, kw, Cin, Cout]), so checkpoints and exported
weights do not depend on it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CONV_IMPLS = ("auto", "xla", "im2col", "dense")

# "auto" limits on the CPU: the im2col patches and the dense matrix are materialised, so
# they are used only while they stay small next to the activations around them.
_IM2COL_MAX_BYTES = 512 * 2 ** 20
_DENSE_MAX_BYTES = 64 * 2 ** 20  # the [H * W * Cin, Ho * Wo * Cout] matrix


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Spatial output size of a convolution along one axis."""
    return (size + 2 * pad - kernel) // stride + 1


def _xla(x, kernel, stride: int, pad: int):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _im2col(x, kernel, stride: int, pad: int):
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    taps = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return (patches.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
            ).reshape(n, ho, wo, cout)


@functools.lru_cache(maxsize=None)
def dense_tap_index(h: int, w: int, kh: int, kw: int, stride: int, pad: int) -> np.ndarray:
    """[H, W, Ho, Wo] int: which kernel tap (row-major i * kw + j) links input pixel (a, b)
    to output pixel (p, q), or kh * kw where none does (the zero block)."""
    ho, wo = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    a = np.arange(h)[:, None, None, None]
    b = np.arange(w)[None, :, None, None]
    i = a - (np.arange(ho)[None, None, :, None] * stride - pad)
    j = b - (np.arange(wo)[None, None, None, :] * stride - pad)
    inside = (i >= 0) & (i < kh) & (j >= 0) & (j < kw)
    return np.where(inside, i * kw + j, kh * kw).astype(np.int32)


def dense_conv_matrix(kernel, h: int, w: int, stride: int, pad: int):
    """The convolution of an [H, W, Cin] map as a [H * W * Cin, Ho * Wo * Cout] matrix.

    kernel: [kh, kw, Cin, Cout]. Differentiable in the kernel (a gather of its taps)."""
    kh, kw, cin, cout = kernel.shape
    idx = dense_tap_index(h, w, kh, kw, stride, pad)
    taps = jnp.concatenate([kernel.reshape(kh * kw, cin, cout),
                            jnp.zeros((1, cin, cout), kernel.dtype)])
    blocks = taps[idx]                                   # [H, W, Ho, Wo, Cin, Cout]
    return blocks.transpose(0, 1, 4, 2, 3, 5).reshape(h * w * cin, -1)


def _dense(x, kernel, stride: int, pad: int):
    n, h, w, _ = x.shape
    ho, wo = output_size(h, kernel.shape[0], stride, pad), output_size(w, kernel.shape[1],
                                                                        stride, pad)
    y = x.reshape(n, -1) @ dense_conv_matrix(kernel, h, w, stride, pad)
    return y.reshape(n, ho, wo, kernel.shape[-1])


_IMPLS: dict[str, Callable] = {"xla": _xla, "im2col": _im2col, "dense": _dense}


def choose_conv_impl(x_shape, kernel_shape, stride: int, pad: int, *,
                     backend: str = "cpu", itemsize: int = 4) -> str:
    """The implementation "auto" uses for one layer (static shapes only).

    Off the CPU: "xla". On the CPU, from experiments/bench_conv.py (forward + backward of
    every layer of the Fashion-MNIST ResNet-18 at widths 0.25 and 0.5, batch 512, compiled
    with bt_jax's XLA options, on a 2-core x86 CPU; experiments/results/bench_conv_cpu.csv):
    "dense" on maps of at most 2x2 pixels (10.5 ms against 206 ms for "xla" at 128
    channels, 36.7 against 1,025 at 256); "im2col" for strided 1x1 layers (1.3-1.7x
    faster) and strided layers with at most 2x2 outputs (2.4x at 128 channels, 10.3x at
    256); "xla" for everything else, where it was fastest or level. A materialised
    array above its size limit falls back to "xla".
    """
    if backend != "cpu":
        return "xla"
    n, h, w, cin = x_shape
    kh, kw, _, cout = kernel_shape
    ho, wo = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    if h * w <= 4 and h * w * cin * ho * wo * cout * itemsize <= _DENSE_MAX_BYTES:
        return "dense"
    patch_bytes = n * ho * wo * kh * kw * cin * itemsize
    if stride > 1 and (kh * kw == 1 or ho * wo <= 4) and patch_bytes <= _IM2COL_MAX_BYTES:
        return "im2col"
    return "xla"


def conv2d(x, kernel, stride: int = 1, pad: int = 0, impl: str = "auto"):
    """Cross-correlation of NHWC x [N, H, W, Cin] with an HWIO kernel [kh, kw, Cin, Cout],
    zero padding `pad` on every side and equal strides: [N, Ho, Wo, Cout]."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}; got {impl!r} "
                         "(config field model.conv_impl).")
    if impl == "auto":
        impl = choose_conv_impl(x.shape, kernel.shape, stride, pad,
                                backend=jax.default_backend(), itemsize=x.dtype.itemsize)
    return _IMPLS[impl](x, kernel, stride, pad)


class Conv(nn.Module):
    """A bias-free square convolution with symmetric padding; parameters as `nn.Conv`'s
    ("kernel": [k, k, Cin, Cout]), so it drops in without changing checkpoints.

    Attributes:
      features: Cout; kernel_size: k; strides: stride; padding: pad on every side.
      impl: one of CONV_IMPLS (see the module docstring).
      dtype: computation dtype (the kernel is stored in float32 and cast).
    """
    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    impl: str = "auto"
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """[N, H, W, Cin] -> [N, Ho, Wo, features]."""
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides,
                      self.padding, self.impl)
