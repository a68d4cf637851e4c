"""TFDS sources: STL-10, Imagenette, ImageNet by name, and any TFDS image classification
dataset as data.name="tfds:<name>". Pretraining streams their record files (`TFDSSplit`,
each process reading only its share); evaluation decodes the labelled splits into memory.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np

from bt_jax.data import import_tensorflow, import_tfds, in_memory
from bt_jax.data.sources.base import Source, SourceShape, Split, imagenet_stats
from bt_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TFDSSpec:
    """How a named source maps onto TFDS.

    tfds_name: TFDS's name (with config, e.g. "imagenette/full-size-v2").
    pretrain: the default split pretraining reads (data.pretrain_split overrides it).
    train, test: the labelled splits of evaluation.
    streamed: pretraining streams the records (large or variable-size images) instead of
      decoding the split into memory (small fixed-size images).
    shape: the pretraining split's `SourceShape`, where TFDS's catalogue fixes it.
    """
    tfds_name: str
    pretrain: str = "train"
    train: str = "train"
    test: str = "test"
    streamed: bool = True
    shape: Optional[SourceShape] = None


TFDS_SOURCES = {   # example counts: TFDS's catalogue
    "stl10": TFDSSpec("stl10", pretrain="train+unlabelled",        # 5k + 100k 96x96 images
                      shape=SourceShape(105_000, 10)),
    "imagenette": TFDSSpec("imagenette", test="validation", shape=SourceShape(9_469, 10)),
    "imagenet2012": TFDSSpec("imagenet2012", test="validation",
                             shape=SourceShape(1_281_167, 1000)),
}
TFDS_PREFIX = "tfds:"   # data.name="tfds:<name>": any TFDS image classification dataset


def tfds_spec(name: str) -> Optional[TFDSSpec]:
    """The TFDSSpec of a source name, or None if the source is not read through TFDS."""
    if name.startswith(TFDS_PREFIX):
        return TFDSSpec(name[len(TFDS_PREFIX):])
    return TFDS_SOURCES.get(name)


def _tfds_not_found(name: str, split: str, data_dir: str, why: str) -> ConfigError:
    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return ConfigError(
        f"TFDS dataset {name!r} (split {split!r}) was not found in {where}: {why}. Prepare it "
        f"where there is a network (`tfds build {name} --data_dir=DIR`; ImageNet needs its "
        "tar files in DIR/downloads/manual first), copy DIR here and set "
        "--config.data.path=DIR, or allow downloading with --config.data.download=True.")


def _split_names(split: str) -> list[str]:
    """"train+unlabelled[:50%]" -> ["train", "unlabelled"]."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def tfds_builder(name: str, split: str, data_dir: str = "", download: bool = False):
    """The TFDS builder of `name` with `split` checked to exist; ConfigError otherwise."""
    tfds = import_tfds(f"TFDS's {name!r}")
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ConfigError(f"TFDS has no dataset named {name!r} ({str(e).splitlines()[0]}). "
                          "Check data.name (see `tfds.list_builders()`).") from None
    if download:
        builder.download_and_prepare()
    known = list(builder.info.splits.keys())   # empty when not prepared (or mocked)
    missing = [s for s in _split_names(split) if known and s not in known]
    if missing:
        raise ConfigError(f"TFDS dataset {name!r} has no split {missing[0]!r}; its splits are "
                          f"{known}. Set data.pretrain_split (or pick another dataset).")
    return builder


def tfds_records(builder, split, *, data_dir: str = "", shuffle_seed: Optional[int] = None):
    """tf.data of this split's raw examples, images still encoded, with "tfds_id".

    split: a split string or a `tfds.split_for_jax_process` share. With shuffle_seed set,
    the record files are read in an order drawn from it (deterministic); else in order.
    """
    tfds = import_tfds("Reading TFDS records")
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=shuffle_seed,
                                  interleave_cycle_length=16)
    try:
        return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                  decoders={"image": tfds.decode.SkipDecoding()},
                                  read_config=read_config)
    except (AssertionError, FileNotFoundError):
        raise _tfds_not_found(builder.name, str(split), data_dir,
                              "it has not been prepared there") from None


def _num_examples(builder, split, data_dir: str = "") -> int:
    """Examples in a (possibly sliced or per-process) split: from TFDS's metadata, else by
    the dataset's cardinality (mocked datasets)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        n = int(tfds_records(builder, split, data_dir=data_dir).cardinality())
        if n < 0:
            raise ConfigError(f"Cannot count the examples of split {split!r} of "
                              f"{builder.name!r}.") from None
        return n




@dataclasses.dataclass(frozen=True)
class TFDSSplit:
    """A TFDS split read as a stream of records: nothing is held in memory.

    name: TFDS's dataset name; split: e.g. "train+unlabelled"; data_dir: "" for TFDS's
    default; num_classes: labels of the dataset (unlabelled examples have label -1).
    """
    name: str
    split: str
    data_dir: str
    num_classes: int
    download: bool = False

    def builder(self):
        return tfds_builder(self.name, self.split, self.data_dir, self.download)

    def process_share(self, process_index: int, process_count: int):
        """This process's contiguous 1/process_count of the split (TFDS's even split)."""
        tfds = import_tfds("Streaming TFDS across processes")
        if process_count == 1:
            return self.split
        return tfds.split_for_jax_process(self.split, process_index=process_index,
                                          process_count=process_count)

    def share_sizes(self, process_count: int) -> list[int]:
        """Examples in each process's share, [process_count]."""
        builder = self.builder()
        return [_num_examples(builder, self.process_share(p, process_count), self.data_dir)
                for p in range(process_count)]

    def __len__(self) -> int:
        return self.share_sizes(1)[0]

    def stream(self, *, shuffle_seed: int, shuffle_buffer: int, process_index: int = 0,
               process_count: int = 1):
        """One pass over this process's share in an order drawn from shuffle_seed.

        Returns tf.data of {"encoded": string [], "label": int32 [] (-1: none),
        "index": int32 [] (the example's position in the whole split: the same on every
        process and in every epoch)}. The order is deterministic: the record files are
        interleaved in an order drawn from the seed, then shuffled in a buffer of
        shuffle_buffer examples seeded by it.
        """
        tf = import_tensorflow("Streaming a TFDS dataset")
        builder = self.builder()
        ds = tfds_records(builder, self.process_share(process_index, process_count),
                          data_dir=self.data_dir, shuffle_seed=shuffle_seed)
        index_of = _example_index_fn(builder, self.split)
        has_label = "label" in builder.info.features

        def example(ex):
            label = tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
            return {"encoded": ex["image"], "label": label, "index": index_of(ex["tfds_id"])}

        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return ds

    gather_on_host = False

    @property
    def pipeline_purpose(self) -> str:
        return f"Streaming TFDS's {self.name!r}"

    def normalization_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """torchvision's ImageNet statistics (a streamed split's own would take a pass)."""
        return imagenet_stats()

    def steps_per_epoch(self, global_batch: int, process_count: int = 1) -> int:
        """Each process streams its own share; the epoch ends when the smallest share runs
        out of full local batches, so every process runs the same number of steps."""
        local = in_memory.local_batch(global_batch, process_count)
        return in_memory.full_batches(min(self.share_sizes(process_count)), local)

    def tf_epochs(self, *, seed: int, global_batch: int, start_step: int, process_index: int,
                  process_count: int, shuffle_buffer: int) -> Iterator:
        """One tf.data per epoch of {"encoded", "index", "label", "epoch"}: this process's
        share in the epoch's order (drawn from (seed, epoch)), from start_step on. Skipped
        records are read, not decoded."""
        tf = import_tensorflow()
        local = in_memory.local_batch(global_batch, process_count)
        steps = self.steps_per_epoch(global_batch, process_count)
        epoch, skip = divmod(start_step, steps)
        while True:
            ds = self.stream(shuffle_seed=_epoch_seed(seed, epoch), shuffle_buffer=shuffle_buffer,
                             process_index=process_index, process_count=process_count)
            ds = ds.skip(skip * local).take((steps - skip) * local)
            yield ds.map(lambda ex, e=epoch: {"encoded": ex["encoded"], "index": ex["index"],
                                              "label": ex["label"],
                                              "epoch": tf.constant(e, tf.int32)})
            epoch, skip = epoch + 1, 0

    def decode_error(self, error, indices) -> Optional[ConfigError]:
        del error, indices
        return None


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 0x7FD5]).integers(2**31 - 1))


def _example_index_fn(builder, split: str):
    """A tf function tfds_id (b"<file>__<position>") -> int32 index of the example in split.

    The index is the record file's offset in the split plus the position in the file, so
    examples are numbered 0..N-1 over "train+unlabelled" as a whole. Where the file layout
    is unknown (mocked datasets) it falls back to a 31-bit hash of the id.
    """
    tf = import_tensorflow("Streaming a TFDS dataset")
    keys, offsets, total = [], [], 0
    for name in _split_names(split):
        try:
            instructions = builder.info.splits[name].file_instructions
        except (KeyError, ValueError):
            instructions = []
        for fi in instructions:
            keys.append(os.path.basename(fi.filename))
            offsets.append(total)
            total += fi.examples_in_shard
    table = None
    if keys:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(offsets, tf.int64)),
            default_value=-1)

    def index_of(tfds_id):
        parts = tf.strings.split(tfds_id, "__")
        position = tf.strings.to_number(parts[-1], tf.int64)
        fallback = tf.strings.to_hash_bucket_fast(tfds_id, 2**31 - 1)
        if table is None:
            return tf.cast(fallback, tf.int32)
        offset = table.lookup(tf.strings.reduce_join(parts[:-1], separator="__"))
        return tf.cast(tf.where(offset >= 0, offset + position, fallback), tf.int32)

    return index_of


def center_square(image, size: int):
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: shorter side resized to size (bicubic,
    antialiased), centre square kept. The evaluation transform."""
    tf = import_tensorflow("Cropping TFDS images")
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    x = tf.image.resize(tf.cast(image, tf.float32), new, method="bicubic", antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[top:top + size, left:left + size]
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def load_tfds_in_memory(spec: TFDSSpec, split: str, image_size: int, path: str = "", *,
                        download: bool = False, **unused) -> Split:
    """A labelled TFDS split decoded into memory at image_size (see `center_square`).

    split: "train" | "test" (the spec's labelled splits) or a TFDS split string.
    `path` is TFDS's data_dir ("" for TFDS's default, ~/tensorflow_datasets). With
    download=False nothing is fetched: the data must already be prepared there.
    """
    del unused
    tf = import_tensorflow(f"TFDS's {spec.tfds_name!r}")
    from bt_jax.data.augment import decode_rgb  # pylint: disable=import-outside-toplevel
    split = {"train": spec.train, "test": spec.test}.get(split, split)
    builder = tfds_builder(spec.tfds_name, split, path, download)
    ds = tfds_records(builder, split, data_dir=path)
    gray = builder.info.features["image"].shape[-1] == 1

    def example(ex):
        image = decode_rgb(ex["image"])
        image = image[..., :1] if gray else image
        size_ok = tf.reduce_all(tf.shape(image)[:2] == image_size)
        image = tf.cond(size_ok, lambda: image, lambda: center_square(image, image_size))
        return image, tf.cast(ex["label"], tf.int32)

    images, labels = [], []
    batches = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    for x, y in batches.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise _tfds_not_found(spec.tfds_name, split, path, "the split is empty")
    return Split(np.concatenate(images), np.concatenate(labels),
                 builder.info.features["label"].num_classes)




def stream_split(spec: TFDSSpec, data_config, split: str) -> TFDSSplit:
    """The TFDSSplit pretraining streams; fails now, with the fix, where the records are not
    there."""
    d = data_config
    builder = tfds_builder(spec.tfds_name, split, d.path, d.download)
    source = TFDSSplit(spec.tfds_name, split, d.path,
                       builder.info.features["label"].num_classes, d.download)
    len(source)
    return source


def source_of(spec: TFDSSpec) -> Source:
    """The registry entry of a TFDS dataset."""
    load = lambda split, image_size, *, path="", download=False, **unused: (  # noqa: E731
        load_tfds_in_memory(spec, split, image_size, path, download=download))
    stream = (lambda d, split: stream_split(spec, d, split)) if spec.streamed else None
    return Source(load, stream, spec.pretrain, shape=spec.shape)


STL10 = source_of(TFDS_SOURCES["stl10"])
IMAGENETTE = source_of(TFDS_SOURCES["imagenette"])
IMAGENET2012 = source_of(TFDS_SOURCES["imagenet2012"])
