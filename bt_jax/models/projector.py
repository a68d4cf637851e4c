"""The Barlow Twins projector (paper Sec. 3: three linear layers of 8192 units)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


# How the Linear layers' kernels start: Flax's default (lecun_normal: truncated normal, std
# 1 / sqrt(fan_in)) or PyTorch's nn.Linear default, which FAIR's code uses
# (kaiming_uniform with a = sqrt(5): U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), std
# 1 / sqrt(3 fan_in), 1.73x smaller).
LINEAR_INITS = {"lecun": nn.initializers.lecun_normal(),
                "torch": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")}


class Projector(nn.Module):
    """Linear(no bias)-BN-ReLU for every layer but the last; the last is Linear(no bias).

    Attributes:
      dims: output width of each layer, e.g. (8192, 8192, 8192).
      use_bn: False drops the BatchNorms (the paper's "no BN in projector" ablation).
      axis_name: mesh axis for cross-replica BatchNorm statistics, or None.
      dtype: computation dtype.
      linear_init: the Linear kernels' initialisation, a key of LINEAR_INITS.

    [N, F] features -> [N, dims[-1]] float32 embeddings.
    """
    dims: Sequence[int] = (8192, 8192, 8192)
    use_bn: bool = True
    axis_name: Any = None
    dtype: Any = jnp.float32
    linear_init: str = "lecun"

    @nn.compact
    def __call__(self, x, train: bool = True):
        if not self.dims:
            raise ValueError(
                "projector dims must name at least one layer, e.g. (2048, 2048, 2048).")
        x = x.astype(self.dtype)
        for i, d in enumerate(self.dims[:-1]):
            x = nn.Dense(d, use_bias=False, dtype=self.dtype,
                         kernel_init=LINEAR_INITS[self.linear_init], name=f"linear{i}")(x)
            if self.use_bn:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 axis_name=self.axis_name, dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
        x = nn.Dense(self.dims[-1], use_bias=False, dtype=self.dtype,
                     kernel_init=LINEAR_INITS[self.linear_init],
                     name=f"linear{len(self.dims) - 1}")(x)
        return x.astype(jnp.float32)
