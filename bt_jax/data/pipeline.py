"""The train and eval iterators: host numpy batches ready for `parallel.host_to_global`.

Train batches are pairs of augmented views. The order of examples in epoch e is a
permutation drawn from (seed, e) and every view is a function of (seed, epoch, example
index), so the stream is fully determined by (config, step): a run resumed at step s
sees the batches an uninterrupted run sees from step s on. Batches come in the layout
`bt_jax.data.layout` states for data.augment_on and the split.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from bt_jax.data import import_tensorflow, in_memory, sources
from bt_jax.data.layout import CROPS, IMAGE, VIEWS, BatchLayout
from bt_jax.data.views import ViewConfig, normalize


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


def _example_to_views(layout: BatchLayout, view_cfgs: tuple[ViewConfig, ViewConfig],
                      seed: int, mean, std):
    """The host's per-example transform, traced once for the whole run:
    {"image" | "encoded", "index", "epoch"} -> one row of `layout`: normalised views
    ("views"), or the uint8 crops ("crops")."""
    from bt_jax.data import augment  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()
    cfg_a, cfg_b = view_cfgs

    @tf.function
    def transform(ex):
        view_seed = augment.view_seed(seed, ex["epoch"], ex["index"])
        out = {"index": ex["index"], "label": ex["label"]}
        if layout.views_on_device:
            out["epoch"] = ex["epoch"]
            if IMAGE in ex:
                out[IMAGE] = ex[IMAGE]
            else:
                out.update(zip(CROPS, augment.crop_pair_encoded(ex["encoded"], view_seed,
                                                                cfg_a, cfg_b)))
            return out
        if IMAGE in ex:
            a, b = augment.augment_pair(ex[IMAGE], view_seed, cfg_a, cfg_b)
        else:
            a, b = augment.augment_pair_encoded(ex["encoded"], view_seed, cfg_a, cfg_b)
        out.update(zip(VIEWS, ((a - mean) / std, (b - mean) / std)))
        return out

    return transform


def require_packages(layout: BatchLayout, source) -> None:
    """Raises now (a ConfigError naming the pip extra), not at the first batch, where the
    host's part of `layout` needs TensorFlow and it is not installed. In-memory splits
    augmented on the device ("images") need nothing beyond JAX and NumPy."""
    if layout.host_uses_tensorflow:
        import_tensorflow(source.pipeline_purpose)


def train_batches(source: sources.PretrainSplit, layout: BatchLayout,
                  view_cfgs: tuple[ViewConfig, ViewConfig], *, seed: int, global_batch: int,
                  shuffle_buffer: int = 0, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1,
                  stats: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Iterator[dict]:
    """Endless iterator of this process's share of each global batch, from start_step on.

    Each batch is in `layout` (`bt_jax.data.layout`): normalised views (with `stats`,
    default the split's `normalization_stats()`) made with `view_cfgs` (config.data's,
    `views.view_configs`) when augmenting on the host; uint8 images or host crops for
    `device_augment` when augmenting on the device. B_local = global_batch /
    process_count. shuffle_buffer: config.data.shuffle_buffer, for record files.

    Batch k is a function of (seed, k) and the settings alone: the same on a resumed run,
    and computed without augmenting the k batches before it. In-memory splits augmented
    on the device are gathered in NumPy (`in_memory.device_batches`: no TensorFlow threads
    beside the step); other in-memory and file splits run as one tf.data pipeline for the
    whole run (no stall at epoch boundaries); TFDS streams as one pipeline per epoch.
    """
    spe = steps_per_epoch(source, global_batch, process_count)
    if not layout.host_uses_tensorflow:
        yield from in_memory.device_batches(
            source.images, source.labels, seed=seed, global_batch=global_batch,
            start_step=start_step, process_index=process_index, process_count=process_count)
        return
    tf = import_tensorflow(source.pipeline_purpose)
    mean, std = stats if stats is not None else source.normalization_stats()
    transform = _example_to_views(layout, view_cfgs, seed, mean, std)
    local = in_memory.local_batch(global_batch, process_count)

    def batch_indices(step):   # the example indices of this process's rows of global step
        epoch, row = divmod(step, spe)
        order = in_memory.epoch_order(seed, epoch, len(source), global_batch)
        return order[row, process_index * local:(process_index + 1) * local]

    step = start_step
    try:
        for ds in source.tf_epochs(seed=seed, global_batch=global_batch,
                                   start_step=start_step, process_index=process_index,
                                   process_count=process_count,
                                   shuffle_buffer=shuffle_buffer):
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
