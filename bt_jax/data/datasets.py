"""Named data sources -> uint8 images and int32 labels, held in memory or streamed.

Three kinds of split, each giving (uint8 [H, W, C] image, int32 label) per example:
- `Split`: decoded images in memory, [N, H, W, C] (digits, Fashion-MNIST, CIFAR, and every
  split used for evaluation, resized to data.image_size);
- `FileSplit`: image files on disk, decoded when read (folders of any size);
- `TFDSSplit`: a TFDS split streamed from its record files (STL-10, Imagenette, ImageNet),
  each process reading only its share.
`load_split` gives the in-memory evaluation splits; `pretrain_split` the split pretraining
reads. Every failure to find data is a ConfigError naming what was looked for and where.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import zlib
from typing import Callable, Optional, Union

import numpy as np

from bt_jax.config import ConfigError
from bt_jax.data import import_tensorflow, import_tfds

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
# torchvision's ImageNet statistics: the normalisation of streamed sources, whose channel
# statistics would take a pass over the data to compute.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Split:
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


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
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


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean [N] mask of test examples: the same fraction from every class, fixed by seed."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_test[idx[: int(round(test_fraction * idx.size))]] = True
    return is_test


def load_digits(split: str, image_size: int, **unused) -> Split:
    """scikit-learn's 1,797 8x8 handwritten digits, upsampled to image_size.

    The data has no official split: a fixed stratified 80/20 split (seed 0, independent
    of the run's seed) gives 1,438 train and 359 test images (rounding per class). Pixel
    values 0..16 are scaled to 0..255.
    """
    del unused  # embedded in scikit-learn: no path, no download
    from sklearn.datasets import load_digits as sk_digits  # pylint: disable=import-outside-toplevel
    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    is_test = _stratified_split(labels, 0.2, seed=0)
    keep = is_test if split == "test" else ~is_test
    return Split(_resize_uint8(images[keep], image_size), labels[keep], 10)


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic 0 0 0x08 ndim, ndim big-endian int32 sizes,
    then the uint8 values), optionally gzipped, as a numpy array. A truncated, corrupt or
    non-uint8 file is one ConfigError naming it."""
    def corrupt(why: str) -> ConfigError:
        return ConfigError(f"The IDX file {path!r} is truncated or corrupt ({why}). Replace it: "
                           "`apt-get install --reinstall -y dataset-fashion-mnist`, or copy the "
                           "original file again.")

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise corrupt(f"{type(e).__name__}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise corrupt("its first bytes are not an IDX magic number")
    if data[2] != 0x08:
        raise corrupt(f"value type 0x{data[2]:02x}; only unsigned bytes (0x08) are images")
    ndim = data[3]
    header = 4 + 4 * ndim
    if not 1 <= ndim <= 4 or len(data) < header:
        raise corrupt(f"a header of {ndim} dimensions in {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != want:
        raise corrupt(f"its header says shape {shape}, {want:,} bytes, but it holds "
                      f"{len(data):,}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


def load_fashion_mnist(split: str, image_size: int, path: str = "", *, download: bool = False,
                       **unused) -> Split:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 train, 10,000 test 28x28 grayscale images.

    Read from the four IDX files (optionally gzipped) in `path`, or by default in
    /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist package); where they
    are not there, from TFDS's "fashion_mnist" (data_dir `path`, or TFDS's default).
    """
    del unused
    directory = path or FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    files = [_find_idx(directory, f"{prefix}-{kind}-idx{n}-ubyte")
             for kind, n in (("images", 3), ("labels", 1))]
    if None not in files:
        images = _read_idx(files[0])[..., None]
        labels = _read_idx(files[1]).astype(np.int32)
        if images.ndim != 4 or labels.shape != images.shape[:1] or labels.max(initial=0) > 9:
            raise ConfigError(
                f"The Fashion-MNIST IDX files {files[0]!r} and {files[1]!r} do not match: "
                f"{images.shape[0]} images of shape {images.shape[1:3]} and labels of shape "
                f"{labels.shape} (classes 0-9). Replace them with the original files.")
        return Split(_resize_uint8(images, image_size), labels, 10)
    try:
        return load_tfds_in_memory(TFDSSpec("fashion_mnist", streamed=False), split, image_size,
                                   path, download=download)
    except ConfigError as e:
        raise ConfigError(
            f"Fashion-MNIST: the IDX files {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] are not in {directory!r}, and TFDS cannot "
            f"load it either ({e}). Offline, install the IDX files with `apt-get install -y "
            f"dataset-fashion-mnist` (into {FASHION_MNIST_DIR}) or set data.path to a folder "
            "holding them.") from None


@dataclasses.dataclass(frozen=True)
class CifarArchive:
    """The layout of one of CIFAR's official python-pickle archives (Krizhevsky 2009).

    folder: the archive's top folder; tarball: the archive's file name; train, test: the
    pickles of each split inside folder; label_key: the labels' key in each pickle.
    """
    name: str
    folder: str
    tarball: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    num_classes: int


CIFAR_ARCHIVES = {
    "cifar10": CifarArchive("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                            b"labels", 10),
    "cifar100": CifarArchive("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                             ("train",), ("test",), b"fine_labels", 100),
}


def _cifar_pickles(archive: CifarArchive, path: str, split: str) -> Optional[list[bytes]]:
    """The raw pickles of a split, from path/<folder>/, path itself (if it is that folder)
    or path/<tarball>; None where none of them is there."""
    import tarfile  # pylint: disable=import-outside-toplevel
    names = archive.train if split == "train" else archive.test
    for directory in (os.path.join(path, archive.folder), path):
        files = [os.path.join(directory, n) for n in names]
        if all(os.path.isfile(f) for f in files):
            out = []
            for f in files:
                with open(f, "rb") as fh:
                    out.append(fh.read())
            return out
    tarball = os.path.join(path, archive.tarball)
    if os.path.isfile(tarball):
        with tarfile.open(tarball, "r:*") as tar:
            return [tar.extractfile(f"{archive.folder}/{n}").read() for n in names]
    return None


def decode_cifar_pickle(raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickle of a CIFAR python archive -> (uint8 [N, 32, 32, 3], int32 [N]).

    Each pickle is a dict (written by Python 2: byte-string keys) whose b"data" is uint8
    [N, 3072], a row being the 1,024 red, then green, then blue values of a 32x32 image in
    row-major order. Unpickling runs code chosen by the file: read only archives you trust
    (the official ones from the dataset's page)."""
    import pickle  # pylint: disable=import-outside-toplevel
    batch = pickle.loads(raw, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key], np.int32)


def load_cifar(name: str, split: str, image_size: int, path: str = "", *,
               download: bool = False, **unused) -> Split:
    """CIFAR-10 (50,000 train / 10,000 test) or CIFAR-100 (same sizes, 100 fine labels).

    Read without TensorFlow from the official python archive in `path`: its folder
    (cifar-10-batches-py/, cifar-100-python/), path being that folder, or the .tar.gz as
    downloaded; where none is there, from TFDS (data_dir `path`, or TFDS's default).
    """
    del unused
    archive = CIFAR_ARCHIVES[name]
    raws = _cifar_pickles(archive, path, split) if path else None
    if raws is not None:
        parts = [decode_cifar_pickle(raw, archive.label_key) for raw in raws]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= archive.num_classes):
            raise ConfigError(f"{archive.name}: labels outside 0..{archive.num_classes - 1} "
                              f"in {path!r}: is it the {archive.name} archive?")
        return Split(_resize_uint8(images, image_size), labels, archive.num_classes)
    try:
        return load_tfds_in_memory(TFDSSpec(name, streamed=False), split, image_size, path,
                                   download=download)
    except ConfigError as e:
        raise ConfigError(
            f"{archive.name}: no python archive ({archive.folder}/ or {archive.tarball}) in "
            f"{path or 'data.path (unset)'!r}, and TFDS cannot load it either ({e}). Set "
            f"data.path to the folder holding {archive.folder}/ or {archive.tarball} from "
            "https://www.cs.toronto.edu/~kriz/cifar.html.") from None


# --------------------------------------------------------------------------- TFDS sources


@dataclasses.dataclass(frozen=True)
class TFDSSpec:
    """How a named source maps onto TFDS.

    tfds_name: TFDS's name (with config, e.g. "imagenette/full-size-v2").
    pretrain: the default split pretraining reads (data.pretrain_split overrides it).
    train, test: the labelled splits of evaluation.
    streamed: pretraining streams the records (large or variable-size images) instead of
      decoding the split into memory (small fixed-size images).
    """
    tfds_name: str
    pretrain: str = "train"
    train: str = "train"
    test: str = "test"
    streamed: bool = True


TFDS_SOURCES = {
    "stl10": TFDSSpec("stl10", pretrain="train+unlabelled"),       # 5k + 100k 96x96 images
    "imagenette": TFDSSpec("imagenette", test="validation"),
    "imagenet2012": TFDSSpec("imagenet2012", test="validation"),
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


# ---------------------------------------------------------------------------- image folders


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """Image files decoded when read. paths: str [N]; labels: int32 [N] (-1: unlabelled)."""
    paths: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return self.paths.shape[0]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                  and not d.startswith("."))


def list_image_files(root: str, classes: Optional[list[str]] = None
                     ) -> tuple[list[str], list[int]]:
    """(paths, labels) of the images under root, sorted.

    A root with sub-directories is labelled: each sub-directory is a class, numbered by its
    position in `classes` (default: root's own sorted sub-directories). A root holding
    image files directly is unlabelled (label -1). Raises ConfigError for a missing or empty
    root, or a class not in `classes`.
    """
    if not os.path.isdir(root):
        raise ConfigError(f"Image folder {root!r} does not exist. data.path must hold one "
                          "directory per split (train/, test/, optionally unlabelled/), each "
                          "with one sub-directory of JPEG/PNG images per class, or the images "
                          "themselves (unlabelled).")
    subdirs = _class_dirs(root)
    if subdirs:
        classes = subdirs if classes is None else classes
        extra = sorted(set(subdirs) - set(classes))
        if extra:
            raise ConfigError(f"{root!r} has classes that the train split lacks: {extra}.")
        pairs = [(os.path.join(root, c, f), label) for label, c in enumerate(classes)
                 if os.path.isdir(os.path.join(root, c))
                 for f in sorted(os.listdir(os.path.join(root, c))) if _is_image(f)]
    else:
        pairs = [(os.path.join(root, f), UNLABELLED) for f in sorted(os.listdir(root))
                 if _is_image(f)]
    if not pairs:
        raise ConfigError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {root!r} or its "
                          "class sub-directories.")
    return [p for p, _ in pairs], [label for _, label in pairs]


# Images above this many pixels are skipped unread: a small file (a "decompression bomb":
# a 12,000 x 12,000 PNG of one colour is under 1 MB: tests/test_reliability.py) could
# otherwise decode to hundreds of megabytes or more.
# PIL's default limit (Image.MAX_IMAGE_PIXELS), about 9,500 x 9,500.
MAX_IMAGE_PIXELS = 89_478_485


def _png_size(head: bytes) -> Optional[tuple[int, int]]:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _jpeg_size(f) -> Optional[tuple[int, int]]:
    """(width, height) from a JPEG's start-of-frame segment, read marker by marker."""
    f.seek(2)
    for _ in range(10_000):
        marker = f.read(2)
        while len(marker) == 2 and marker[0] == 0xFF and marker[1] == 0xFF:   # fill bytes
            marker = marker[1:] + f.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:   # markers without a length
            continue
        length = int.from_bytes(f.read(2), "big")
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            frame = f.read(5)
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


def image_dimensions(path: str) -> Optional[tuple[int, int]]:
    """(width, height) of a PNG or JPEG file from its header alone (nothing is decoded), or
    None if the header cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
            return _png_size(head)
    except OSError:
        return None


def drop_oversized(paths: list[str], labels: list[int], *, strict: bool, where: str,
                   max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list[str], list[int]]:
    """Removes images whose header declares more than max_pixels pixels, before any is
    decoded, printing how many; with strict, raises naming one."""
    big = []
    for p in paths:
        size = image_dimensions(p)
        if size is not None and size[0] * size[1] > max_pixels:
            big.append((p, size))
    if not big:
        return paths, labels
    (first, (w, h)), n = big[0], len(big)
    if strict:
        raise ConfigError(f"Image {first!r} declares {w:,} x {h:,} pixels, over the limit of "
                          f"{max_pixels:,} (decoding it could take gigabytes; {n} such file(s) "
                          f"in {where!r}). Downscale or remove it, or set "
                          "data.strict_decode=False to skip such files.")
    print(f"warning: skipped {n} image file(s) of more than {max_pixels:,} pixels in "
          f"{where!r}, e.g. {first!r} ({w:,} x {h:,}).", flush=True)
    skip = {p for p, _ in big}
    keep = [i for i, p in enumerate(paths) if p not in skip]
    return [paths[i] for i in keep], [labels[i] for i in keep]


def _undecodable(paths: list[str]) -> list[str]:
    """The files among `paths` that TF cannot decode (read and decoded in parallel)."""
    tf = import_tensorflow("Decoding image files (data.name=folder)")
    from bt_jax.data.augment import decode_rgb  # pylint: disable=import-outside-toplevel

    def check(path):
        return path, tf.shape(decode_rgb(tf.io.read_file(path)))

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.apply(tf.data.experimental.ignore_errors())
    good = {p.decode() for p, _ in ds.as_numpy_iterator()}
    return [p for p in paths if p not in good]


def drop_undecodable(paths: list[str], labels: list[int], *, strict: bool, where: str
                     ) -> tuple[list[str], list[int]]:
    """Removes files TF cannot decode, printing how many; with strict, raises naming one."""
    bad = _undecodable(paths)
    if bad and strict:
        raise ConfigError(f"Cannot decode image {bad[0]!r} ({len(bad)} unreadable file(s) in "
                          f"{where!r}). Remove or replace it, or set data.strict_decode=False "
                          "to skip unreadable files.")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image file(s) in {where!r}, e.g. "
              f"{bad[0]!r}.", flush=True)
        bad_set = set(bad)
        keep = [i for i, p in enumerate(paths) if p not in bad_set]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    if not paths:
        raise ConfigError(f"None of the image files in {where!r} could be decoded.")
    return paths, labels


def _folder_classes(path: str) -> Optional[list[str]]:
    train = os.path.join(path, "train")
    return _class_dirs(train) if os.path.isdir(train) and _class_dirs(train) else None


def folder_files(path: str, split: str, *, strict: bool = False, verify: bool = True
                 ) -> FileSplit:
    """The image files of `split` under a folder dataset, for streaming.

    split: "+"-joined sub-directory names of path ("train", "train+unlabelled"); "." is
    path itself. Labelled sub-directories use path/train's classes. With verify, files TF
    cannot decode are dropped up front (one parallel decoding pass) and counted in a
    warning, or with strict stop the run naming the file; then a resumed run reads the same
    files in the same order.
    """
    if not path:
        raise ConfigError("data.name='folder' needs data.path: a directory holding train/ and "
                          "test/, each with one sub-directory of images per class.")
    classes = _folder_classes(path)
    paths, labels = [], []
    for name in split.split("+"):
        p, y = list_image_files(os.path.normpath(os.path.join(path, name)), classes)
        paths += p
        labels += y
    paths, labels = drop_oversized(paths, labels, strict=strict,
                                   where=os.path.join(path, split))
    if not paths:
        raise ConfigError(f"None of the image files in {os.path.join(path, split)!r} is small "
                          "enough to decode.")
    if verify:
        paths, labels = drop_undecodable(paths, labels, strict=strict,
                                         where=os.path.join(path, split))
    return FileSplit(np.asarray(paths, dtype=object), np.asarray(labels, np.int32),
                     len(classes or []))


def decode_image_file(path: str, image_size: int) -> np.ndarray:
    """One JPEG/PNG file -> uint8 [image_size, image_size, 3] (see `center_square`).

    Any bit depth (16-bit PNGs are scaled to 8 bits), grayscale (repeated to 3 channels),
    palette (expanded) or alpha (dropped). Raises tf.errors.OpError on a file that cannot
    be decoded.
    """
    tf = import_tensorflow("Decoding image files (data.name=folder)")
    from bt_jax.data.augment import decode_rgb  # pylint: disable=import-outside-toplevel
    return center_square(decode_rgb(tf.io.read_file(path)), image_size).numpy()


def load_folder(split: str, image_size: int, path: str = "", *, strict: bool = False,
                **unused) -> Split:
    """A labelled image folder split, path/<split>/<class>/*.{jpg,jpeg,png}, decoded into
    memory at image_size (see `decode_image_file`): the evaluation splits.

    Classes are the sorted sub-directory names of path/train (the test split must not add
    any). Files that cannot be decoded are skipped and counted in a printed warning, or,
    with strict=True, stop the load with an error naming the file.
    """
    del unused
    tf = import_tensorflow("Decoding image files (data.name=folder)")
    files = folder_files(path, split, strict=strict, verify=False)
    if files.num_classes == 0 or (files.labels == UNLABELLED).any():
        raise ConfigError(f"{os.path.join(path, split)!r} has no class sub-directories, so it "
                          "cannot be used to evaluate: lay it out as <class>/<images>, or set "
                          "eval.enabled=False.")
    images, labels, skipped = [], [], []
    for file, label in zip(files.paths, files.labels):
        try:
            images.append(decode_image_file(file, image_size))
            labels.append(label)
        except tf.errors.OpError as e:
            if strict:
                raise ConfigError(f"Cannot decode image {file!r} ({e.message.splitlines()[0]}). "
                                  "Remove or replace it, or set data.strict_decode=False to "
                                  "skip unreadable files.") from None
            skipped.append(file)
    root = os.path.join(path, split)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image file(s) in {root!r}, e.g. "
              f"{skipped[0]!r}.", flush=True)
    if not images:
        raise ConfigError(f"None of the {len(files)} image files in {root!r} could be decoded.")
    return Split(np.stack(images), np.asarray(labels, np.int32), files.num_classes)


# name -> loader(split, image_size, *, path, download, strict) -> Split; a loader ignores
# the options it has no use for.
IN_MEMORY_SOURCES: dict[str, Callable[..., Split]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": functools.partial(load_cifar, "cifar10"),
    "cifar100": functools.partial(load_cifar, "cifar100"),
    "folder": load_folder,
}
SOURCES = sorted([*IN_MEMORY_SOURCES, *TFDS_SOURCES]) + [TFDS_PREFIX + "<name>"]


def _check_name(name: str) -> None:
    if name not in IN_MEMORY_SOURCES and tfds_spec(name) is None:
        raise ConfigError(f"Unknown dataset {name!r} (config field data.name); known datasets: "
                          f"{SOURCES}.")


def load_split(name: str, split: str, *, image_size: int, path: str = "",
               download: bool = False, strict: bool = False) -> Split:
    """The labelled split ("train" | "test") of a source, in memory at image_size.

    path: data.path (a directory of files, or TFDS's data_dir for TFDS sources).
    download: whether TFDS sources may download (data.download).
    strict: whether an undecodable image file stops the load (data.strict_decode).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if image_size <= 0:
        raise ConfigError(f"data.image_size must be positive; got {image_size}.")
    spec = tfds_spec(name)
    if spec is not None:
        return load_tfds_in_memory(spec, split, image_size, path, download=download)
    return IN_MEMORY_SOURCES[name](split, image_size, path=path, download=download,
                                   strict=strict)


PretrainSplit = Union[Split, FileSplit, TFDSSplit]


def validation_mask(labels: np.ndarray, num_examples: int, seed: int) -> np.ndarray:
    """Boolean [N] mask of a class-balanced validation part of a labelled split.

    Every class gives round(num_examples / C) examples (all it has, if fewer), drawn by
    seed alone: the same (labels, num_examples, seed) always hold out the same images.

    Args:
      labels: [N] int class labels.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if num_examples >= np.sum(labels >= 0):
        raise ConfigError(f"data.validation_examples={num_examples} leaves no training images "
                          f"of the {np.sum(labels >= 0)} in the train split: hold out fewer.")
    per_class = max(1, int(round(num_examples / len(classes))))
    rng = np.random.default_rng([seed, 0x5A11])
    held = np.zeros(labels.shape[0], bool)
    for c in classes:
        held[rng.permutation(np.flatnonzero(labels == c))[:per_class]] = True
    return held


def split_off_validation(split: Split, num_examples: int, seed: int) -> tuple[Split, Split]:
    """(rest, validation): `validation_mask`'s images taken out of an in-memory split."""
    held = validation_mask(split.labels, num_examples, seed)
    return (Split(split.images[~held], split.labels[~held], split.num_classes),
            Split(split.images[held], split.labels[held], split.num_classes))


def _check_validation_source(d) -> None:
    spec = tfds_spec(d.name)
    if d.validation_examples and (d.name == "folder" or (spec is not None and spec.streamed)):
        raise ConfigError(
            f"data.validation_examples holds out part of an in-memory train split; "
            f"{d.name!r} is streamed. Set data.validation_examples=0 and tune on a split of "
            "your own (e.g. a folder with train/ and test/ made from your training images).")


def labelled_splits(data_config, seed: int) -> tuple[Split, Split]:
    """(probe train, probe eval): the in-memory labelled splits the probes fit and score on.

    data.validation_examples == 0: the train and test splits. > 0: the train split without
    its validation part, and that part (`validation_mask`, drawn by seed); the test split
    is then not read at all, so tuning never sees it.
    """
    d = data_config
    _check_validation_source(d)

    def load(split):
        return load_split(d.name, split, image_size=d.image_size, path=d.path,
                          download=d.download, strict=d.strict_decode)

    if d.validation_examples > 0:
        return split_off_validation(load("train"), d.validation_examples, seed)
    return load("train"), load("test")


def pretrain_split(data_config, seed: int = 0) -> PretrainSplit:
    """The split pretraining reads, from config.data.

    In memory for small fixed-size sources (digits, Fashion-MNIST, CIFAR), streamed for
    the others: image folders as a `FileSplit`, STL-10 / Imagenette / ImageNet / "tfds:"
    as a `TFDSSplit`. data.pretrain_split overrides the source's default split. With
    data.validation_examples > 0 the validation part of the train split (drawn by seed,
    `validation_mask`) is left out.
    """
    d = data_config
    _check_name(d.name)
    _check_validation_source(d)
    if d.image_size <= 0:
        raise ConfigError(f"data.image_size must be positive; got {d.image_size}.")
    spec = tfds_spec(d.name)
    split = d.pretrain_split or (spec.pretrain if spec else "train")
    if d.name == "folder":
        return folder_files(d.path, split, strict=d.strict_decode, verify=d.verify_files)
    if spec is None or not spec.streamed:
        if split not in SPLITS:
            raise ConfigError(f"data.pretrain_split of {d.name!r} must be one of {SPLITS}; "
                              f"got {split!r}.")
        source = load_split(d.name, split, image_size=d.image_size, path=d.path,
                            download=d.download, strict=d.strict_decode)
        if d.validation_examples > 0:
            if split != "train":
                raise ConfigError("data.validation_examples holds out part of the train "
                                  f"split; data.pretrain_split is {split!r}.")
            source = split_off_validation(source, d.validation_examples, seed)[0]
        return source
    builder = tfds_builder(spec.tfds_name, split, d.path, d.download)
    source = TFDSSplit(spec.tfds_name, split, d.path,
                       builder.info.features["label"].num_classes, d.download)
    len(source)   # fails here, with the fix, if the records are not there
    return source
