"""The train and eval iterators: host numpy batches ready for `parallel.host_to_global`.

Train batches are pairs of augmented views. The order of examples in epoch e is a
permutation drawn from (seed, e) and every view is a function of (seed, epoch, example
index), so the stream is fully determined by (config, step): a run resumed at step s
sees the batches an uninterrupted run sees from step s on.
"""
from __future__ import annotations

from typing import Iterator, Optional

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


def normalization_stats(source: datasets.PretrainSplit) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ([3], [3]) that views are normalised with: the split's own
    (`channel_stats`) when it is in memory, torchvision's ImageNet values when streamed."""
    if isinstance(source, datasets.Split):
        return channel_stats(source)
    return (np.asarray(datasets.IMAGENET_MEAN, np.float32),
            np.asarray(datasets.IMAGENET_STD, np.float32))


def epoch_order(seed: int, epoch: int, num_examples: int, global_batch: int) -> np.ndarray:
    """[steps_per_epoch, global_batch] example indices of one epoch (remainder dropped)."""
    steps = num_examples // global_batch
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[: steps * global_batch].reshape(steps, global_batch)


def _local_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ConfigError(f"batch_size {global_batch} is not divisible by the {process_count} "
                          "processes.")
    return global_batch // process_count


def steps_per_epoch(source, global_batch: int, process_count: int = 1) -> int:
    """Full global batches in one epoch; raises if there is not even one.

    source: a split, or (for in-memory and file splits) its number of examples. A streamed
    TFDS split gives each process its own share; the epoch ends when the smallest share
    runs out of full local batches, so every process runs the same number of steps.
    """
    if isinstance(source, datasets.TFDSSplit):
        local = _local_batch(global_batch, process_count)
        sizes = source.share_sizes(process_count)
        steps, num = min(sizes) // local, sum(sizes)
    else:
        num = source if isinstance(source, int) else len(source)
        steps = num // global_batch
    if steps == 0:
        raise ConfigError(f"batch_size {global_batch} is larger than the {num} training "
                          "examples: lower config.batch_size.")
    return steps


def _tfds_epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 0x7FD5]).integers(2**31 - 1))


def epoch_examples(config, source: datasets.PretrainSplit, epoch: int, *, skip_steps: int,
                   steps: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """This process's examples of one epoch from step skip_steps on, in training order.

    Returns tf.data of {"index": int32 []} plus "image": uint8 [H, W, C] (in-memory
    splits) or "encoded": string [] (files and TFDS records, still encoded). Skipping reads
    no image: in-memory and file splits slice the epoch's index order; TFDS streams skip
    records before they are decoded.
    """
    local = _local_batch(config.batch_size, process_count)
    if isinstance(source, datasets.TFDSSplit):
        ds = source.stream(shuffle_seed=_tfds_epoch_seed(config.seed, epoch),
                           shuffle_buffer=config.data.shuffle_buffer,
                           process_index=process_index, process_count=process_count)
        ds = ds.skip(skip_steps * local).take((steps - skip_steps) * local)
        return ds.map(lambda ex: {"encoded": ex["encoded"], "index": ex["index"]})
    order = epoch_order(config.seed, epoch, len(source), config.batch_size)
    mine = order[skip_steps:steps, process_index * local:(process_index + 1) * local]
    ds = tf.data.Dataset.from_tensor_slices(mine.reshape(-1).astype(np.int32))
    if isinstance(source, datasets.FileSplit):
        paths = tf.constant(source.paths.astype(str))
        return ds.map(lambda i: {"encoded": tf.io.read_file(tf.gather(paths, i)), "index": i},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = tf.constant(source.images)
    return ds.map(lambda i: {"image": tf.gather(images, i), "index": i})


def _example_to_views(config, mean, std):
    """The host's per-example transform: {"image" | "encoded", "index"}, epoch -> either
    normalised views (augment_on="host") or raw images / uint8 crops ("device")."""
    cfg_a, cfg_b = view_configs(config)
    on_device = config.data.augment_on == "device"

    def transform(ex, epoch):
        seed = augment.view_seed(config.seed, epoch, ex["index"])
        out = {"index": ex["index"]}
        if on_device:
            out["epoch"] = tf.constant(epoch, tf.int32)
            if "image" in ex:
                out["image"] = ex["image"]
            else:
                out["crop_a"], out["crop_b"] = augment.crop_pair_encoded(ex["encoded"], seed,
                                                                         cfg_a, cfg_b)
            return out
        if "image" in ex:
            a, b = augment.augment_pair(ex["image"], seed, cfg_a, cfg_b)
        else:
            a, b = augment.augment_pair_encoded(ex["encoded"], seed, cfg_a, cfg_b)
        out["view_a"], out["view_b"] = (a - mean) / std, (b - mean) / std
        return out

    return transform


def _name_bad_file(source: datasets.FileSplit, indices: np.ndarray, error) -> ConfigError:
    bad = datasets._undecodable(list(source.paths[indices]))  # pylint: disable=protected-access
    what = repr(bad[0]) if bad else "an image of this batch"
    return ConfigError(f"Cannot decode {what} ({error.message.splitlines()[0]}). Remove or "
                       "replace it, or set data.verify_files=True to check every file once at "
                       "start-up and skip unreadable ones.")


def train_batches(config, source: datasets.PretrainSplit, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    With data.augment_on == "host" it yields {"view_a": float32 [B_local, S, S, 3],
    "view_b": same, "index": int32 [B_local]}, normalised with `stats` (default
    `normalization_stats(source)`). With "device" it yields what `device_augment` needs:
    {"image": uint8 [B_local, H, W, C]} for in-memory splits or {"crop_a", "crop_b": uint8
    [B_local, S, S, 3]} (decoded and cropped on the host) for streamed ones, with
    "index" and "epoch": int32 [B_local]. B_local = batch_size / process_count.

    Batch k is a function of (config, k) alone: the same on a resumed run, and computed
    without augmenting the k batches before it.
    """
    local = _local_batch(config.batch_size, process_count)
    spe = steps_per_epoch(source, config.batch_size, process_count)
    mean, std = stats if stats is not None else normalization_stats(source)
    transform = _example_to_views(config, mean, std)
    epoch, skip = divmod(start_step, spe)
    while True:
        ds = epoch_examples(config, source, epoch, skip_steps=skip, steps=spe,
                            process_index=process_index, process_count=process_count)
        ds = ds.map(lambda ex, e=epoch: transform(ex, e), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        step = skip
        try:
            for batch in ds.as_numpy_iterator():
                yield batch
                step += 1
        except tf.errors.InvalidArgumentError as e:
            if not isinstance(source, datasets.FileSplit):
                raise
            order = epoch_order(config.seed, epoch, len(source), config.batch_size)
            raise _name_bad_file(source, order[step, process_index * local:
                                               (process_index + 1) * local], e) from None
        epoch, skip = epoch + 1, 0


def eval_arrays(split: datasets.Split, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] float32 images of a split, normalised with mean and std ([3] each; the
    train split's `channel_stats`)."""
    x = split.images.astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (x - mean) / std
