"""The train and eval iterators: host numpy batches ready for `parallel.host_to_global`.

Train batches are pairs of augmented views. The order of examples in epoch e is a
permutation drawn from (seed, e) and every view is a function of (seed, epoch, example
index), so the stream is fully determined by (config, step): a run resumed at step s
sees the batches an uninterrupted run sees from step s on.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from bt_jax.data import import_tensorflow, in_memory, sources
from bt_jax.data.views import CROPS, IMAGE, VIEWS, normalize, view_configs


def normalization_stats(source) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ([3], [3]) that views are normalised with: the split's own
    (`sources.channel_stats`) when it is in memory, torchvision's ImageNet values when
    streamed (`normalization_stats()` of the split)."""
    return source.normalization_stats()


def steps_per_epoch(source, global_batch: int, process_count: int = 1) -> int:
    """Full global batches in one epoch; raises if there is not even one.

    source: a split, or the number of examples of an in-memory or file split.
    """
    if isinstance(source, int):
        return in_memory.full_batches(source, global_batch)
    return source.steps_per_epoch(global_batch, process_count)


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
            if IMAGE in ex:
                out[IMAGE] = ex[IMAGE]
            else:
                out.update(zip(CROPS, augment.crop_pair_encoded(ex["encoded"], seed, cfg_a,
                                                                cfg_b)))
            return out
        if IMAGE in ex:
            a, b = augment.augment_pair(ex[IMAGE], seed, cfg_a, cfg_b)
        else:
            a, b = augment.augment_pair_encoded(ex["encoded"], seed, cfg_a, cfg_b)
        out.update(zip(VIEWS, ((a - mean) / std, (b - mean) / std)))
        return out

    return transform


def require_packages(config, source) -> None:
    """Raises now (a ConfigError naming the pip extra), not at the first batch, where this
    config's pipeline needs TensorFlow and it is not installed. In-memory splits augmented
    on the device need nothing beyond JAX and NumPy."""
    if not (config.data.augment_on == "device" and source.gather_on_host):
        import_tensorflow(source.pipeline_purpose)


def train_batches(config, source: sources.PretrainSplit, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    Each batch is laid out as `views.batch_keys(config.data.augment_on,
    source.gather_on_host)` says (the layouts are in `bt_jax.data.views`): normalised views
    (with `stats`, default the split's `normalization_stats()`) when augmenting on the
    host; uint8 images or host crops for `device_augment` when augmenting on the device.
    B_local = batch_size / process_count.

    Batch k is a function of (config, k) alone: the same on a resumed run, and computed
    without augmenting the k batches before it. In-memory splits augmented on the device
    are gathered in NumPy (`in_memory.device_batches`: no TensorFlow threads beside the
    step); other in-memory and file splits run as one tf.data pipeline for the whole run
    (no stall at epoch boundaries); TFDS streams as one pipeline per epoch.
    """
    spe = steps_per_epoch(source, config.batch_size, process_count)
    if config.data.augment_on == "device" and source.gather_on_host:
        yield from in_memory.device_batches(
            source.images, source.labels, seed=config.seed, global_batch=config.batch_size,
            start_step=start_step, process_index=process_index, process_count=process_count)
        return
    tf = import_tensorflow(source.pipeline_purpose)
    mean, std = stats if stats is not None else source.normalization_stats()
    transform = _example_to_views(config, mean, std)
    local = in_memory.local_batch(config.batch_size, process_count)

    def batch_indices(step):   # the example indices of this process's rows of global step
        epoch, row = divmod(step, spe)
        order = in_memory.epoch_order(config.seed, epoch, len(source), config.batch_size)
        return order[row, process_index * local:(process_index + 1) * local]

    step = start_step
    try:
        for ds in source.tf_epochs(seed=config.seed, global_batch=config.batch_size,
                                   start_step=start_step, process_index=process_index,
                                   process_count=process_count,
                                   shuffle_buffer=config.data.shuffle_buffer):
            ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            for batch in ds.as_numpy_iterator():
                yield batch
                step += 1
    except tf.errors.InvalidArgumentError as e:
        error = source.decode_error(e, lambda: batch_indices(step))
        if error is None:
            raise
        raise error from None


def eval_arrays(split: sources.Split, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, S, S, 3] float32 images of a split, normalised with mean and std ([3] each; the
    train split's `channel_stats`)."""
    return normalize(split.images, mean, std)
