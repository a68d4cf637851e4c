"""The train and eval iterators: host numpy batches ready for `parallel.host_to_global`.

Train batches are pairs of augmented views. The order of examples in epoch e is a
permutation drawn from (seed, e) and every view is a function of (seed, epoch, example
index), so the stream is fully determined by (config, step): a run resumed at step s
sees the batches an uninterrupted run sees from step s on.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from bt_jax.config import ConfigError
from bt_jax.data import datasets, import_tensorflow, in_memory
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


def steps_per_epoch(source, global_batch: int, process_count: int = 1) -> int:
    """Full global batches in one epoch; raises if there is not even one.

    source: a split, or (for in-memory and file splits) its number of examples. A streamed
    TFDS split gives each process its own share; the epoch ends when the smallest share
    runs out of full local batches, so every process runs the same number of steps.
    """
    if isinstance(source, datasets.TFDSSplit):
        local = in_memory.local_batch(global_batch, process_count)
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


def _index_stream(config, num_examples: int, start_step: int, steps: int, local: int,
                  process_index: int) -> "tf.data.Dataset":
    """Endless tf.data of {"index", "epoch"}: int32 [] from global step start_step on, this
    process's columns of each global batch of `epoch_order`. Skipping steps costs nothing."""
    tf = import_tensorflow()
    def rows():
        epoch, skip = divmod(start_step, steps)
        while True:
            order = in_memory.epoch_order(config.seed, epoch, num_examples, config.batch_size)
            for row in order[skip:steps, process_index * local:(process_index + 1) * local]:
                yield row.astype(np.int32), np.full(local, epoch, np.int32)
            epoch, skip = epoch + 1, 0

    spec = tf.TensorSpec([local], tf.int32)
    ds = tf.data.Dataset.from_generator(rows, output_signature=(spec, spec))
    return ds.unbatch().map(lambda i, e: {"index": i, "epoch": e})


def _tfds_epochs(config, source: datasets.TFDSSplit, start_step: int, steps: int, local: int,
                 process_index: int, process_count: int):
    """Endless iterator of per-epoch tf.data of {"encoded", "index", "epoch"}: this process's
    share in each epoch's order, from start_step on. Skipped records are read, not decoded."""
    tf = import_tensorflow()
    epoch, skip = divmod(start_step, steps)
    while True:
        ds = source.stream(shuffle_seed=_tfds_epoch_seed(config.seed, epoch),
                           shuffle_buffer=config.data.shuffle_buffer,
                           process_index=process_index, process_count=process_count)
        ds = ds.skip(skip * local).take((steps - skip) * local)
        yield ds.map(lambda ex, e=epoch: {"encoded": ex["encoded"], "index": ex["index"],
                                          "label": ex["label"],
                                          "epoch": tf.constant(e, tf.int32)})
        epoch, skip = epoch + 1, 0


def _load_example(source):
    """{"index", "epoch"} -> the same plus "label" and "image" (in memory) or "encoded"
    (files)."""
    tf = import_tensorflow()
    labels = tf.constant(np.asarray(source.labels, np.int32))
    if isinstance(source, datasets.FileSplit):
        paths = tf.constant(source.paths.astype(str))
        return lambda ex: {**ex, "label": tf.gather(labels, ex["index"]),
                           "encoded": tf.io.read_file(tf.gather(paths, ex["index"]))}
    images = tf.constant(source.images)
    return lambda ex: {**ex, "label": tf.gather(labels, ex["index"]),
                       "image": tf.gather(images, ex["index"])}


def _example_to_views(config, mean, std):
    """The host's per-example transform, traced once for the whole run:
    {"image" | "encoded", "index", "epoch"} -> normalised views (augment_on="host"), or
    the raw image / uint8 crops ("device")."""
    from bt_jax.data import augment  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()
    cfg_a, cfg_b = view_configs(config)
    on_device = config.data.augment_on == "device"

    @tf.function
    def transform(ex):
        seed = augment.view_seed(config.seed, ex["epoch"], ex["index"])
        out = {"index": ex["index"], "label": ex["label"]}
        if on_device:
            out["epoch"] = ex["epoch"]
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


def _pipeline_purpose(config, source) -> str:
    """What the tf.data pipeline is needed for, for the error where TensorFlow is missing."""
    if isinstance(source, datasets.TFDSSplit):
        return f"Streaming TFDS's {source.name!r}"
    if isinstance(source, datasets.FileSplit):
        return "Reading image files (data.name=folder)"
    return "Host augmentation (data.augment_on=host)"


def require_packages(config, source) -> None:
    """Raises now (a ConfigError naming the pip extra), not at the first batch, where this
    config's pipeline needs TensorFlow and it is not installed. In-memory splits augmented
    on the device need nothing beyond JAX and NumPy."""
    if not (config.data.augment_on == "device" and isinstance(source, datasets.Split)):
        import_tensorflow(_pipeline_purpose(config, source))


def train_batches(config, source: datasets.PretrainSplit, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    With data.augment_on == "host" it yields {"view_a": float32 [B_local, S, S, 3],
    "view_b": same, "index": int32 [B_local], "label": int32 [B_local] (-1: unlabelled)},
    normalised with `stats` (default
    `normalization_stats(source)`). With "device" it yields what `device_augment` needs:
    {"image": uint8 [B_local, H, W, C]} for in-memory splits or {"crop_a", "crop_b": uint8
    [B_local, S, S, 3]} (decoded and cropped on the host) for streamed ones, with
    "index", "label" and "epoch": int32 [B_local]. B_local = batch_size / process_count.

    Batch k is a function of (config, k) alone: the same on a resumed run, and computed
    without augmenting the k batches before it. In-memory splits augmented on the device
    are gathered in NumPy (`in_memory.device_batches`: no TensorFlow threads beside the
    step); other in-memory and file splits run as one tf.data pipeline for the whole run
    (no stall at epoch boundaries); TFDS streams as one pipeline per epoch.
    """
    local = in_memory.local_batch(config.batch_size, process_count)
    spe = steps_per_epoch(source, config.batch_size, process_count)
    if config.data.augment_on == "device" and isinstance(source, datasets.Split):
        yield from in_memory.device_batches(
            source.images, source.labels, seed=config.seed, global_batch=config.batch_size,
            start_step=start_step, process_index=process_index, process_count=process_count)
        return
    tf = import_tensorflow(_pipeline_purpose(config, source))
    mean, std = stats if stats is not None else normalization_stats(source)
    transform = _example_to_views(config, mean, std)

    def finish(ds):
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    if isinstance(source, datasets.TFDSSplit):
        for ds in _tfds_epochs(config, source, start_step, spe, local, process_index,
                               process_count):
            yield from finish(ds).as_numpy_iterator()
    ds = _index_stream(config, len(source), start_step, spe, local, process_index)
    ds = ds.map(_load_example(source), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    step = start_step
    try:
        for batch in finish(ds).as_numpy_iterator():
            yield batch
            step += 1
    except tf.errors.InvalidArgumentError as e:
        if not isinstance(source, datasets.FileSplit):
            raise
        epoch, row = divmod(step, spe)
        order = in_memory.epoch_order(config.seed, epoch, len(source), config.batch_size)
        raise _name_bad_file(source, order[row, process_index * local:
                                           (process_index + 1) * local], e) from None


def eval_arrays(split: datasets.Split, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] float32 images of a split, normalised with mean and std ([3] each; the
    train split's `channel_stats`)."""
    x = split.images.astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (x - mean) / std
