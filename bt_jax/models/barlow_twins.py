"""Backbone + projector: the network f of Barlow Twins."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models.projector import Projector


class BarlowTwins(nn.Module):
    """f = projector o backbone; both views of a pair go through the same f.

    Attributes:
      backbone: a module mapping [N, H, W, C] images to [N, F] features.
      projector_dims: widths of the projector's layers.
      axis_name: mesh axis for the projector's cross-replica BatchNorm (give the backbone
        the same axis_name).
      dtype: the projector's computation dtype.

    Call: [N, H, W, C] -> {"features": [N, F], "embedding": [N, projector_dims[-1]]}.
    Params live under "backbone" and "projector".
    """
    backbone: nn.Module
    projector_dims: Sequence[int] = (8192, 8192, 8192)
    axis_name: Any = None
    dtype: Any = jnp.float32

    def setup(self):
        self.projector = Projector(dims=tuple(self.projector_dims), axis_name=self.axis_name,
                                   dtype=self.dtype)

    def __call__(self, x, train: bool = True):
        h = self.backbone(x, train=train)
        return {"features": h, "embedding": self.projector(h, train=train)}

    def features(self, x, train: bool = False):
        """[N, H, W, C] -> [N, F]: the backbone alone (what evaluation uses)."""
        return self.backbone(x, train=train)
