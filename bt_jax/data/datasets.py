"""Named data sources -> in-memory uint8 images and int32 labels, or tf.data of them.

Every source returns the same thing: a `Split` of uint8 images [N, H, W, C] (C = 1 or 3)
and int32 labels [N]. The registry `SOURCES` maps config names (`data.name`) to loaders.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from typing import Callable

import numpy as np

from bt_jax.config import ConfigError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")


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
    """Bicubic resize of uint8 [N, h, w, C] to [N, size, size, C], rounded and clipped."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    out = tf.image.resize(tf.convert_to_tensor(images, tf.float32), (size, size),
                          method="bicubic", antialias=True)
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


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
    """An IDX file (LeCun's MNIST format), optionally gzipped, as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory!r}. Install it with "
        "`apt-get install -y dataset-fashion-mnist` (puts the IDX files in "
        f"{FASHION_MNIST_DIR}) or point data.path at a folder holding the four IDX files.")


def load_fashion_mnist(split: str, image_size: int, path: str = "", **unused) -> Split:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files: 60,000 train, 10,000 test."""
    del unused  # local IDX files only
    directory = path or FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))[..., None]
    labels = _read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
    return Split(_resize_uint8(images, image_size), labels, 10)


def load_tfds_in_memory(name: str, split: str, image_size: int, path: str = "", *,
                        download: bool = False, **unused) -> Split:
    """A small labelled TFDS dataset (e.g. CIFAR-10: 50,000 32x32 images) read into memory.

    `path` is TFDS's data_dir ("" for TFDS's default, ~/tensorflow_datasets). With
    download=False nothing is fetched: the data must already be prepared there.
    """
    del unused
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    data_dir = path or None
    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True,
                             with_info=True, download=download)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
        where = path or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise ConfigError(
            f"TFDS dataset {name!r} split {split!r} was not found in {where} "
            f"({str(e).splitlines()[0]}). Prepare it where there is a network "
            f"(`tfds build {name} --data_dir=DIR`) and set --config.data.path=DIR, or allow "
            "downloading with --config.data.download=True.") from None
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(4096)):
        images.append(x)
        labels.append(y)
    images = np.concatenate(images)
    if images.ndim == 3:
        images = images[..., None]
    return Split(_resize_uint8(images.astype(np.uint8), image_size),
                 np.concatenate(labels).astype(np.int32), info.features["label"].num_classes)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def decode_image_file(path: str, image_size: int) -> np.ndarray:
    """One JPEG/PNG file -> uint8 [image_size, image_size, 3].

    Any bit depth (16-bit PNGs are scaled to 8 bits), grayscale (repeated to 3 channels),
    palette (expanded) or alpha (dropped). The shorter side is resized to image_size
    (bicubic, antialiased) and the centre square kept. Raises tf.errors.OpError on a file
    that cannot be decoded.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    img = tf.io.decode_image(tf.io.read_file(path), dtype=tf.uint8, expand_animations=False)
    img = img[..., :1] if img.shape[-1] in (1, 2) else img[..., :3]
    if img.shape[-1] == 1:
        img = tf.tile(img, [1, 1, 3])
    h, w = img.shape[0], img.shape[1]
    scale = image_size / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    img = tf.image.resize(tf.cast(img, tf.float32), (nh, nw), method="bicubic", antialias=True)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    img = img[top:top + image_size, left:left + image_size]
    return np.clip(np.round(img.numpy()), 0, 255).astype(np.uint8)


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def load_folder(split: str, image_size: int, path: str = "", *, strict: bool = False,
                **unused) -> Split:
    """Labelled image folders: path/train/<class>/*.{jpg,jpeg,png} and path/test/<class>/...

    Classes are the sorted sub-directory names of path/train (the test split must not add
    any). Files that cannot be decoded are skipped and counted in a printed warning, or,
    with strict=True, stop the load with an error naming the file. Images are decoded into
    memory at image_size (see decode_image_file): for folders of up to a few hundred
    thousand small images.
    """
    del unused
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not path:
        raise ConfigError("data.name='folder' needs data.path: a directory holding train/ and "
                          "test/, each with one sub-directory of images per class.")
    root = os.path.join(path, split)
    if not os.path.isdir(root):
        raise ConfigError(f"Image folder {root!r} does not exist: data.path must hold train/ "
                          "and test/, each with one sub-directory of images per class.")
    classes = _class_dirs(os.path.join(path, "train")) if os.path.isdir(
        os.path.join(path, "train")) else []
    extra = sorted(set(_class_dirs(root)) - set(classes))
    if extra:
        raise ConfigError(f"{root!r} has classes that {path}/train lacks: {extra}.")
    files = [(os.path.join(root, c, f), label) for label, c in enumerate(classes)
             if os.path.isdir(os.path.join(root, c))
             for f in sorted(os.listdir(os.path.join(root, c)))
             if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ConfigError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in the class "
                          f"sub-directories of {root!r}.")
    images, labels, skipped = [], [], []
    for file, label in files:
        try:
            images.append(decode_image_file(file, image_size))
            labels.append(label)
        except tf.errors.OpError as e:
            if strict:
                raise ConfigError(f"Cannot decode image {file!r} ({e.message.splitlines()[0]}). "
                                  "Remove or replace it, or set data.strict_decode=False to "
                                  "skip unreadable files.") from None
            skipped.append(file)
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image file(s) in {root!r}, e.g. "
              f"{skipped[0]!r}.", flush=True)
    if not images:
        raise ConfigError(f"None of the {len(files)} image files in {root!r} could be decoded.")
    return Split(np.stack(images), np.asarray(labels, np.int32), len(classes))


# name -> loader(split, image_size, *, path, download, strict) -> Split; a loader ignores
# the options it has no use for.
SOURCES: dict[str, Callable[..., Split]] = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": functools.partial(load_tfds_in_memory, "cifar10"),
    "cifar100": functools.partial(load_tfds_in_memory, "cifar100"),
    "folder": load_folder,
}


def load_split(name: str, split: str, *, image_size: int, path: str = "",
               download: bool = False, strict: bool = False) -> Split:
    """Loads split ("train" | "test") of the named source (config field data.name).

    path: data.path (a directory of files, or TFDS's data_dir for TFDS sources).
    download: whether TFDS sources may download (data.download).
    strict: whether an undecodable image file stops the load (data.strict_decode).
    """
    if name not in SOURCES:
        raise ConfigError(f"Unknown dataset {name!r} (config field data.name); known datasets: "
                          f"{sorted(SOURCES)}.")
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if image_size <= 0:
        raise ConfigError(f"data.image_size must be positive; got {image_size}.")
    return SOURCES[name](split, image_size, path=path, download=download, strict=strict)
