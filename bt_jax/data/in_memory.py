"""Train batches of an in-memory split for on-device augmentation, in NumPy alone.

With data.augment_on = "device" the host has nothing to compute for an in-memory split:
each batch is a gather of uint8 images by the epoch's order. Doing it in NumPy, not
tf.data, keeps TensorFlow's thread pools off the cores the train step runs on (on a 2-core
CPU, Fashion-MNIST's first epoch trained at 489-505 pairs/s this way against 274-317
through tf.data: experiments/PERF_NOTES.md, section 8) and needs no TensorFlow at all.

The order is the one `bt_jax.data.pipeline` uses for every source: epoch e visits the
examples in the permutation drawn from (seed, e), remainder dropped, so batch k is a
function of (seed, k) alone and a resumed run sees the batches an uninterrupted one sees.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from bt_jax.data.layout import IMAGE
from bt_jax.errors import ConfigError


def epoch_order(seed: int, epoch: int, num_examples: int, global_batch: int) -> np.ndarray:
    """[steps_per_epoch, global_batch] example indices of one epoch (remainder dropped)."""
    steps = num_examples // global_batch
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[: steps * global_batch].reshape(steps, global_batch)


def full_batches(num_examples: int, global_batch: int) -> int:
    """Full global batches in num_examples (one epoch); raises if there is not even one."""
    steps = num_examples // global_batch
    if steps == 0:
        raise ConfigError(f"batch_size {global_batch} is larger than the {num_examples} "
                          "training examples: lower config.batch_size.")
    return steps


def local_batch(global_batch: int, process_count: int) -> int:
    """Examples per process in each global batch; a clear error if they do not divide."""
    if global_batch % process_count:
        raise ConfigError(f"batch_size {global_batch} is not divisible by the {process_count} "
                          "processes.")
    return global_batch // process_count


def device_batches(images: np.ndarray, labels: np.ndarray, *, seed: int, global_batch: int,
                   start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    Args:
      images: uint8 [N, H, W, C]; labels: int [N] (-1: unlabelled).
      global_batch: examples per step over all processes; process_index / process_count:
        this process takes columns [p * B_local, (p + 1) * B_local) of each global batch.

    Yields:
      {"image": uint8 [B_local, H, W, C], "index", "label", "epoch": int32 [B_local]},
      B_local = global_batch / process_count: what `device_augment.make_view_fn` takes.
    """
    num = len(images)
    steps = full_batches(num, global_batch)
    local = local_batch(global_batch, process_count)
    columns = slice(process_index * local, (process_index + 1) * local)
    labels = np.asarray(labels, np.int32)
    epoch, skip = divmod(start_step, steps)
    while True:
        order = epoch_order(seed, epoch, num, global_batch)
        for row in order[skip:, columns]:
            yield {IMAGE: images[row], "index": row.astype(np.int32), "label": labels[row],
                   "epoch": np.full(local, epoch, np.int32)}
        epoch, skip = epoch + 1, 0
