"""What every data source shares: the in-memory `Split`, the interface the input pipeline
sees in every split, and the registry of named sources.

A split given to `bt_jax.data.pipeline` (an in-memory `Split`, a `folder.FileSplit`, a
`tfds.TFDSSplit`) answers, whatever it is:
- `len(split)`, `split.labels` ([N] int32, -1: unlabelled) and `split.num_classes`;
- `gather_on_host`: True where its uint8 images are one array in memory, which the
  pipeline gathers in NumPy for on-device augmentation (no TensorFlow);
- `pipeline_purpose`: what a tf.data pipeline over it is for (the error where TensorFlow
  is missing names it);
- `normalization_stats()`: (mean [3], std [3]) its views are normalised with;
- `steps_per_epoch(global_batch, process_count)`: full global batches in one epoch;
- `tf_epochs(seed=, global_batch=, start_step=, process_index=, process_count=,
  shuffle_buffer=)`: tf.data datasets of examples {"image" (uint8 [H, W, C]) or "encoded"
  (string []), "index", "label", "epoch": int32 []} from global step start_step on, this
  process's share of each global batch, in order; one for the whole run or one per epoch;
- `decode_error(error, indices)`: the one-line error for a tf.data error on a batch
  (`indices()` gives its example indices), or None to let the error through.

A named source is a `Source` (registered in `sources.SOURCES`): how to load its labelled splits
into memory and, for large ones, how pretraining streams it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import numpy as np

from bt_jax.data import import_tensorflow, in_memory
from bt_jax.data.layout import IMAGE
from bt_jax.errors import ConfigError

SPLITS = ("train", "test")
# torchvision's ImageNet statistics: the normalisation of streamed sources, whose channel
# statistics would take a pass over the data to compute.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_stats() -> tuple[np.ndarray, np.ndarray]:
    """(mean [3], std [3]) float32: torchvision's ImageNet channel statistics."""
    return np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)


def index_stream(*, seed: int, num_examples: int, global_batch: int, start_step: int,
                 steps: int, local: int, process_index: int) -> "tf.data.Dataset":
    """Endless tf.data of {"index", "epoch"}: int32 [] from global step start_step on, this
    process's columns of each global batch of `in_memory.epoch_order`. Skipping steps costs
    nothing."""
    tf = import_tensorflow()

    def rows():
        epoch, skip = divmod(start_step, steps)
        while True:
            order = in_memory.epoch_order(seed, epoch, num_examples, global_batch)
            for row in order[skip:steps, process_index * local:(process_index + 1) * local]:
                yield row.astype(np.int32), np.full(local, epoch, np.int32)
            epoch, skip = epoch + 1, 0

    spec = tf.TensorSpec([local], tf.int32)
    ds = tf.data.Dataset.from_generator(rows, output_signature=(spec, spec))
    return ds.unbatch().map(lambda i, e: {"index": i, "epoch": e})


class IndexedSplit:
    """The pipeline interface of a split whose N examples are addressed by index (in memory,
    files): every process takes its columns of the same global batches, each epoch in the
    order of `in_memory.epoch_order`. Subclasses give `tf_lookup`."""

    def steps_per_epoch(self, global_batch: int, process_count: int = 1) -> int:
        del process_count   # every process takes its columns of the same global batches
        return in_memory.full_batches(len(self), global_batch)

    def tf_epochs(self, *, seed: int, global_batch: int, start_step: int, process_index: int,
                  process_count: int, shuffle_buffer: int) -> Iterator:
        """One tf.data for the whole run: {"index", "epoch", **tf_lookup(index)}."""
        del shuffle_buffer   # the order is `in_memory.epoch_order`'s
        tf = import_tensorflow(self.pipeline_purpose)
        lookup = self.tf_lookup(tf)
        ds = index_stream(seed=seed, num_examples=len(self), global_batch=global_batch,
                          start_step=start_step, steps=self.steps_per_epoch(global_batch),
                          local=in_memory.local_batch(global_batch, process_count),
                          process_index=process_index)
        yield ds.map(lambda ex: {**ex, **lookup(ex["index"])},
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@dataclasses.dataclass(frozen=True)
class Split(IndexedSplit):
    """images: uint8 [N, H, W, C]; labels: int32 [N]; num_classes: number of labels."""
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ConfigError(f"images must be uint8 [N, H, W, C]; got {self.images.dtype} "
                              f"{self.images.shape}.")
        if self.labels.shape != (self.images.shape[0],):
            raise ConfigError(
                f"labels must be [N={self.images.shape[0]}]; got {self.labels.shape}.")

    def __len__(self) -> int:
        return self.images.shape[0]

    gather_on_host = True
    pipeline_purpose = "Host augmentation (data.augment_on=host)"

    def normalization_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """The split's own channel statistics (`channel_stats`)."""
        return channel_stats(self)

    def tf_lookup(self, tf):
        """tf index -> {"label", "image"}: the example's label and uint8 image."""
        images, labels = tf.constant(self.images), tf.constant(self.labels.astype(np.int32))
        return lambda i: {"label": tf.gather(labels, i), IMAGE: tf.gather(images, i)}

    def decode_error(self, error, indices) -> Optional[ConfigError]:
        del error, indices   # in-memory images are decoded already: nothing to name
        return None


def channel_stats(split: Split, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
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


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize (Keys a = -0.5, antialiased when shrinking) of uint8 [N, h, w, C] to
    [N, size, size, C], rounded and clipped; on the host's CPU, without TensorFlow
    (`jax.image.resize`: TF's tf.image.resize(..., "bicubic", antialias=True) to 3e-4)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import jax  # pylint: disable=import-outside-toplevel
    with jax.default_device(jax.local_devices(backend="cpu")[0]):   # this process's own
        out = jax.image.resize(jax.numpy.asarray(images, jax.numpy.float32),
                               (images.shape[0], size, size, images.shape[3]),
                               method="cubic", antialias=True)
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SourceShape:
    """What a source's pretraining split looks like, known without reading it: its number
    of examples, of classes, and the channels of its stored images (1: grayscale). The pod
    planner (`bt_jax.plan`) sizes a run from it."""
    pretrain_examples: int
    num_classes: int
    channels: int = 3


@dataclasses.dataclass(frozen=True)
class Source:
    """A named data source (config data.name).

    load: (split "train" | "test", image_size, *, path, download, strict) -> `Split`: a
      labelled split decoded into memory at image_size (evaluation; pretraining too unless
      `stream` is set). path is data.path, download data.download, strict
      data.strict_decode; a loader ignores the options it has no use for.
    stream: (config.data, split) -> the split pretraining streams (`FileSplit`,
      `TFDSSplit`), or None: pretraining reads `load`'s in-memory split.
    pretrain_split: the split pretraining reads unless data.pretrain_split says otherwise.
    shape: its `SourceShape` where it is fixed (None: a folder, any TFDS dataset).
    """
    load: Callable[..., Split]
    stream: Optional[Callable[[Any, str], Any]] = None
    pretrain_split: str = "train"
    shape: Optional[SourceShape] = None
