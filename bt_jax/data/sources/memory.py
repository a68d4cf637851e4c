"""Small fixed-size sources decoded into memory, read without TensorFlow where their files
are here: scikit-learn's digits, Fashion-MNIST's IDX files, CIFAR's python archives (each
falls back to TFDS where its files are not found).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import zlib
from typing import Optional

import numpy as np

from bt_jax.data.sources.base import Source, SourceShape, Split, resize_uint8
from bt_jax.data.sources.tfds import TFDSSpec, load_tfds_in_memory
from bt_jax.data.subsets import as_mask, class_balanced
from bt_jax.errors import ConfigError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


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
    is_test = as_mask(class_balanced(labels, lambda n: int(round(0.2 * n)),
                                     np.random.default_rng(0)), len(labels))
    keep = is_test if split == "test" else ~is_test
    return Split(resize_uint8(images[keep], image_size), labels[keep], 10)


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
        return Split(resize_uint8(images, image_size), labels, 10)
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
        return Split(resize_uint8(images, image_size), labels, archive.num_classes)
    try:
        return load_tfds_in_memory(TFDSSpec(name, streamed=False), split, image_size, path,
                                   download=download)
    except ConfigError as e:
        raise ConfigError(
            f"{archive.name}: no python archive ({archive.folder}/ or {archive.tarball}) in "
            f"{path or 'data.path (unset)'!r}, and TFDS cannot load it either ({e}). Set "
            f"data.path to the folder holding {archive.folder}/ or {archive.tarball} from "
            "https://www.cs.toronto.edu/~kriz/cifar.html.") from None




DIGITS = Source(load_digits, shape=SourceShape(1438, 10, channels=1))
FASHION_MNIST = Source(load_fashion_mnist, shape=SourceShape(60_000, 10, channels=1))
CIFAR10 = Source(functools.partial(load_cifar, "cifar10"), shape=SourceShape(50_000, 10))
CIFAR100 = Source(functools.partial(load_cifar, "cifar100"), shape=SourceShape(50_000, 100))
