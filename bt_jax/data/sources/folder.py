"""Image folders: path/<split>/<class>/*.{jpg,jpeg,png} (or unlabelled images directly in
path/<split>). Pretraining streams the files (`FileSplit`, decoded when read); evaluation
decodes the labelled splits into memory. Oversized and undecodable files are dropped up
front (counted in a warning) or, with data.strict_decode, stop the run naming the file.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from bt_jax.data import import_tensorflow
from bt_jax.data.sources.base import IndexedSplit, Source, Split, imagenet_stats
from bt_jax.data.sources.tfds import center_square
from bt_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
UNLABELLED = -1


@dataclasses.dataclass(frozen=True)
class FileSplit(IndexedSplit):
    """Image files decoded when read. paths: str [N]; labels: int32 [N] (-1: unlabelled)."""
    paths: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return self.paths.shape[0]

    gather_on_host = False
    pipeline_purpose = "Reading image files (data.name=folder)"

    def normalization_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """torchvision's ImageNet statistics (a streamed split's own would take a pass)."""
        return imagenet_stats()

    def tf_lookup(self, tf):
        """tf index -> {"label", "encoded"}: the example's label and file contents."""
        paths = tf.constant(self.paths.astype(str))
        labels = tf.constant(np.asarray(self.labels, np.int32))
        return lambda i: {"label": tf.gather(labels, i),
                          "encoded": tf.io.read_file(tf.gather(paths, i))}

    def decode_error(self, error, indices) -> Optional[ConfigError]:
        """The file of the failed batch that cannot be decoded, named in one line."""
        bad = _undecodable(list(self.paths[indices()]))
        what = repr(bad[0]) if bad else "an image of this batch"
        return ConfigError(f"Cannot decode {what} ({error.message.splitlines()[0]}). Remove or "
                           "replace it, or set data.verify_files=True to check every file once "
                           "at start-up and skip unreadable ones.")



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


FOLDER = Source(load_folder, stream=lambda d, split: folder_files(
    d.path, split, strict=d.strict_decode, verify=d.verify_files))
