"""Frozen-encoder features of image arrays, and top-k accuracy: what the probes, the kNN
monitor and the fine-tuning evaluation share."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import numpy as np

from bt_jax import parallel, progress


def feature_fn(backbone: nn.Module):
    """jit((variables, [B, S, S, 3] images) -> [B, F] features), inference mode: compile it
    once and pass it to `extract_features` as `apply` where features are taken often."""
    return jax.jit(lambda v, x: backbone.apply(v, x, train=False),
                   compiler_options=parallel.compiler_options())


def extract_features(backbone: nn.Module, variables: dict, images: np.ndarray,
                     batch_size: int = 512, *, apply=None,
                     ticker: Optional[progress.Ticker] = None, offset: int = 0) -> np.ndarray:
    """Backbone features of images in eval mode (running BatchNorm statistics).

    Args:
      backbone: module mapping [B, S, S, 3] -> [B, F]; variables: its {"params", "batch_stats"}.
      images: [N, S, S, 3] float32, normalised.
      apply: `feature_fn(backbone)`, if one is already compiled.
      ticker: a progress.Ticker told offset + the images done after each batch.

    Returns:
      [N, F] float32 numpy features.
    """
    apply = apply or feature_fn(backbone)
    out = []
    for i in range(0, images.shape[0], batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - chunk.shape[0] if images.shape[0] > batch_size else 0
        if pad:  # one static shape for every call: no recompilation for the last batch
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        feats = np.asarray(apply(variables, chunk))
        out.append(feats[: feats.shape[0] - pad])
        if ticker is not None:
            ticker.update(offset + i + chunk.shape[0] - pad)
    return np.concatenate(out).astype(np.float32)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of scores [N, C] whose label [N] is among their k highest scores
    (k is capped at C, so top-5 of a 3-class problem is 1.0)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))
