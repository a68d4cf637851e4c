"""Backbone + projector: the network f of Barlow Twins."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bt_jax.models.projector import Projector


class BarlowTwins(nn.Module):
    """f = projector o backbone; both views of a pair go through the same f.

    Attributes:
      backbone: a module mapping [N, H, W, C] images to [N, F] features.
      projector_dims: widths of the projector's layers.
      projector_bn: False: no BatchNorm in the projector (ablation).
      predictor_dims: widths of a predictor MLP on top of the embedding (ablation, as in
        BYOL); () for none. Its output is "prediction".
      axis_name: mesh axis for the projector's cross-replica BatchNorm (give the backbone
        the same axis_name).
      dtype: the projector's computation dtype.
      projector_init: the projector's (and predictor's) Linear init ("lecun" | "torch").

    Call: [N, H, W, C] -> {"features": [N, F], "embedding": [N, projector_dims[-1]]} and,
    with a predictor and predict=True (the default then), "prediction": [N, D].
    Params live under "backbone", "projector" and "predictor".
    """
    backbone: nn.Module
    projector_dims: Sequence[int] = (8192, 8192, 8192)
    projector_bn: bool = True
    predictor_dims: Sequence[int] = ()
    axis_name: Any = None
    dtype: Any = jnp.float32
    projector_init: str = "lecun"

    def setup(self):
        self.projector = Projector(dims=tuple(self.projector_dims), use_bn=self.projector_bn,
                                   axis_name=self.axis_name, dtype=self.dtype,
                                   linear_init=self.projector_init)
        if self.predictor_dims:
            self.predictor = Projector(dims=tuple(self.predictor_dims),
                                       use_bn=self.projector_bn, axis_name=self.axis_name,
                                       dtype=self.dtype, linear_init=self.projector_init)

    def __call__(self, x, train: bool = True, predict: Optional[bool] = None):
        h = self.backbone(x, train=train)
        out = {"features": h, "embedding": self.projector(h, train=train)}
        if self.predictor_dims and (predict is None or predict):
            out["prediction"] = self.predictor(out["embedding"], train=train)
        return out

    def features(self, x, train: bool = False):
        """[N, H, W, C] -> [N, F]: the backbone alone (what evaluation uses)."""
        return self.backbone(x, train=train)
