"""Class-balanced subsets: the one sampler behind the validation split, the digits test
split, the fast probe's held-out part, the probes' training subset and the fine-tuning
label fractions. No TensorFlow here."""
from __future__ import annotations

from typing import Callable

import numpy as np


def class_balanced(labels: np.ndarray, take: Callable[[int], int],
                   rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `take(n_c)` examples drawn at random from every class c (n_c: the
    class's size; all of it where take asks for more), classes in increasing order.

    Args:
      labels: [N] int class labels; labels < 0 (unlabelled) are never chosen.
      take: class size -> how many of that class to keep.
      rng: the draw; the same generator state always gives the same subset.

    Returns:
      int64 [M] indices into labels, sorted.
    """
    labels = np.asarray(labels)
    chosen = [np.empty(0, np.int64)]
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[:take(len(members))])
    return np.sort(np.concatenate(chosen))


def as_mask(indices: np.ndarray, size: int) -> np.ndarray:
    """Boolean [size] mask that is True at `indices`."""
    mask = np.zeros(size, bool)
    mask[indices] = True
    return mask
