"""The train and eval iterators: host numpy batches ready for `parallel.host_to_global`.

Train batches are pairs of augmented views. The order of examples in epoch e is a
permutation drawn from (seed, e) and every view is a function of (seed, epoch, example
index), so the stream is fully determined by (config, step): a run resumed at step s
sees the batches an uninterrupted run sees from step s on.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from bt_jax.config import ConfigError
from bt_jax.data import augment, datasets
from bt_jax.data.views import view_configs


def channel_stats(split: datasets.Split, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ([3], [3], in [0, 1] units) of a split's images.

    Sums in float64 over chunks of images, so no float copy of the whole split is made.
    """
    total = np.zeros(split.images.shape[-1])
    total_sq = np.zeros(split.images.shape[-1])
    for i in range(0, len(split), chunk):
        x = split.images[i:i + chunk].astype(np.float64) / 255.0
        total += x.sum(axis=(0, 1, 2))
        total_sq += np.square(x).sum(axis=(0, 1, 2))
    count = split.images[..., 0].size
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    if mean.shape[0] == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def epoch_order(seed: int, epoch: int, num_examples: int, global_batch: int) -> np.ndarray:
    """[steps_per_epoch, global_batch] example indices of one epoch (remainder dropped)."""
    steps = num_examples // global_batch
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[: steps * global_batch].reshape(steps, global_batch)


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Full global batches in one epoch; raises if there is not even one."""
    steps = num_examples // global_batch
    if steps == 0:
        raise ConfigError(f"batch_size {global_batch} is larger than the {num_examples} training "
                          "examples: lower config.batch_size.")
    return steps


def train_batches(config, split: datasets.Split, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    With data.augment_on == "host" it yields {"view_a": float32 [B_local, S, S, 3],
    "view_b": same, "index": int32 [B_local]}, normalised with the train split's channel
    statistics. With "device" it yields the raw images for `device_augment`:
    {"image": uint8 [B_local, H, W, C], "index": int32 [B_local], "epoch": int32 [B_local]}.
    B_local = batch_size / process_count.
    """
    global_batch = config.batch_size
    if global_batch % process_count:
        raise ConfigError(f"batch_size {global_batch} is not divisible by the {process_count} "
                          "processes.")
    local = global_batch // process_count
    spe = steps_per_epoch(len(split), global_batch)
    cfg_a, cfg_b = view_configs(config)
    mean, std = channel_stats(split)
    images = tf.constant(split.images)

    def make_pair(index, epoch):
        seed = augment.view_seed(config.seed, epoch, index)
        a, b = augment.augment_pair(tf.gather(images, index), seed, cfg_a, cfg_b)
        return {"view_a": (a - mean) / std, "view_b": (b - mean) / std,
                "index": tf.cast(index, tf.int32)}

    def raw_image(index, epoch):
        return {"image": tf.gather(images, index), "index": tf.cast(index, tf.int32),
                "epoch": tf.constant(epoch, tf.int32)}

    make_example = raw_image if config.data.augment_on == "device" else make_pair

    epoch, skip = divmod(start_step, spe)
    while True:
        order = epoch_order(config.seed, epoch, len(split), global_batch)
        mine = order[skip:, process_index * local:(process_index + 1) * local].reshape(-1)
        ds = tf.data.Dataset.from_tensor_slices(mine.astype(np.int64))
        ds = ds.map(lambda i, e=epoch: make_example(i, e), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        yield from ds.as_numpy_iterator()
        epoch, skip = epoch + 1, 0


def eval_arrays(split: datasets.Split, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] float32 images of a split, normalised with mean and std ([3] each; the
    train split's `channel_stats`)."""
    x = split.images.astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (x - mean) / std
