"""Named data sources -> uint8 images and int32 labels, held in memory or streamed.

Three kinds of split, each giving (uint8 [H, W, C] image, int32 label) per example, with
the interface the input pipeline sees (`base`'s docstring):
- `Split`: decoded images in memory, [N, H, W, C] (digits, Fashion-MNIST, CIFAR, and every
  split used for evaluation, resized to data.image_size);
- `FileSplit`: image files on disk, decoded when read (folders of any size);
- `TFDSSplit`: a TFDS split streamed from its record files (STL-10, Imagenette, ImageNet),
  each process reading only its share.
`load_split` gives the in-memory evaluation splits; `pretrain_split` the split pretraining
reads. Every failure to find data is a ConfigError naming what was looked for and where.

A new source is one module here that defines a `Source(load, stream)` and one line in
SOURCES below (`bt_jax.registry`).
"""
from __future__ import annotations

from typing import Union

import numpy as np

from bt_jax.data.sources.base import (IMAGENET_MEAN, IMAGENET_STD, SPLITS, Source,
                                      SourceShape, Split, channel_stats)
from bt_jax.data.sources.folder import FileSplit
from bt_jax.data.sources.tfds import TFDS_PREFIX, TFDSSplit, TFDSSpec, source_of
from bt_jax.data.subsets import as_mask, class_balanced
from bt_jax.errors import ConfigError
from bt_jax.registry import Registry

SOURCES = Registry("source", "data.name", {
    "digits": "bt_jax.data.sources.memory:DIGITS",
    "fashion_mnist": "bt_jax.data.sources.memory:FASHION_MNIST",
    "cifar10": "bt_jax.data.sources.memory:CIFAR10",
    "cifar100": "bt_jax.data.sources.memory:CIFAR100",
    "folder": "bt_jax.data.sources.folder:FOLDER",
    "stl10": "bt_jax.data.sources.tfds:STL10",
    "imagenette": "bt_jax.data.sources.tfds:IMAGENETTE",
    "imagenet2012": "bt_jax.data.sources.tfds:IMAGENET2012",
}, home="bt_jax/data/sources/__init__.py")

PretrainSplit = Union[Split, FileSplit, TFDSSplit]

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SOURCES", "SPLITS", "FileSplit", "PretrainSplit",
           "Source", "SourceShape", "Split", "TFDSSplit", "channel_stats", "get_source",
           "labelled_splits", "load_split", "pretrain_split",
           "split_off_validation", "validation_mask"]


def get_source(name: str) -> Source:
    """The registered source data.name names ("tfds:<name>": any TFDS dataset, streamed)."""
    if name.startswith(TFDS_PREFIX):
        return source_of(TFDSSpec(name[len(TFDS_PREFIX):]))
    if name not in SOURCES:
        raise ConfigError(f"Unknown dataset {name!r} (config field data.name); known datasets: "
                          f"{sorted(SOURCES) + [TFDS_PREFIX + '<name>']}.")
    return SOURCES.get(name)


def _check_image_size(image_size: int) -> None:
    if image_size <= 0:
        raise ConfigError(f"data.image_size must be positive; got {image_size}.")


def load_split(name: str, split: str, *, image_size: int, path: str = "",
               download: bool = False, strict: bool = False) -> Split:
    """The labelled split ("train" | "test") of a source, in memory at image_size.

    path: data.path (a directory of files, or TFDS's data_dir for TFDS sources).
    download: whether TFDS sources may download (data.download).
    strict: whether an undecodable image file stops the load (data.strict_decode).
    """
    source = get_source(name)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; use one of {SPLITS}.")
    _check_image_size(image_size)
    return source.load(split, image_size, path=path, download=download, strict=strict)


def validation_mask(labels: np.ndarray, num_examples: int, seed: int) -> np.ndarray:
    """Boolean [N] mask of a class-balanced validation part of a labelled split.

    Every class gives round(num_examples / C) examples (all it has, if fewer), drawn by
    seed alone: the same (labels, num_examples, seed) always hold out the same images.

    Args:
      labels: [N] int class labels.
    """
    labels = np.asarray(labels)
    if num_examples >= np.sum(labels >= 0):
        raise ConfigError(f"data.validation_examples={num_examples} leaves no training images "
                          f"of the {np.sum(labels >= 0)} in the train split: hold out fewer.")
    per_class = max(1, int(round(num_examples / len(np.unique(labels[labels >= 0])))))
    held = class_balanced(labels, lambda n: per_class, np.random.default_rng([seed, 0x5A11]))
    return as_mask(held, len(labels))


def split_off_validation(split: Split, num_examples: int, seed: int) -> tuple[Split, Split]:
    """(rest, validation): `validation_mask`'s images taken out of an in-memory split."""
    held = validation_mask(split.labels, num_examples, seed)
    return (Split(split.images[~held], split.labels[~held], split.num_classes),
            Split(split.images[held], split.labels[held], split.num_classes))


def _check_validation_source(d, source: Source) -> None:
    if d.validation_examples and source.stream is not None:
        raise ConfigError(
            f"data.validation_examples holds out part of an in-memory train split; "
            f"{d.name!r} is streamed. Set data.validation_examples=0 and tune on a split of "
            "your own (e.g. a folder with train/ and test/ made from your training images).")


def eval_split_name(data_config) -> str:
    """"validation" when the probes are scored on a hold-out of the train split
    (data.validation_examples > 0), else "test"."""
    return "validation" if data_config.validation_examples else "test"


def labelled_splits(data_config, seed: int) -> tuple[Split, Split]:
    """(probe train, probe eval): the in-memory labelled splits the probes fit and score on.

    data.validation_examples == 0: the train and test splits. > 0: the train split without
    its validation part, and that part (`validation_mask`, drawn by seed); the test split
    is then not read at all, so tuning never sees it.
    """
    d = data_config
    _check_validation_source(d, get_source(d.name))

    def load(split):
        return load_split(d.name, split, image_size=d.image_size, path=d.path,
                          download=d.download, strict=d.strict_decode)

    if d.validation_examples > 0:
        return split_off_validation(load("train"), d.validation_examples, seed)
    return load("train"), load("test")


def pretrain_split(data_config, seed: int = 0) -> PretrainSplit:
    """The split pretraining reads, from config.data.

    In memory for small fixed-size sources (digits, Fashion-MNIST, CIFAR), streamed for
    the others (`Source.stream`): image folders as a `FileSplit`, STL-10 / Imagenette /
    ImageNet / "tfds:" as a `TFDSSplit`. data.pretrain_split overrides the source's default
    split. With data.validation_examples > 0 the validation part of the train split (drawn
    by seed, `validation_mask`) is left out.
    """
    d = data_config
    source = get_source(d.name)
    _check_validation_source(d, source)
    _check_image_size(d.image_size)
    split = d.pretrain_split or source.pretrain_split
    if source.stream is not None:
        return source.stream(d, split)
    if split not in SPLITS:
        raise ConfigError(f"data.pretrain_split of {d.name!r} must be one of {SPLITS}; "
                          f"got {split!r}.")
    images = load_split(d.name, split, image_size=d.image_size, path=d.path,
                        download=d.download, strict=d.strict_decode)
    if d.validation_examples > 0:
        if split != "train":
            raise ConfigError("data.validation_examples holds out part of the train "
                              f"split; data.pretrain_split is {split!r}.")
        images = split_off_validation(images, d.validation_examples, seed)[0]
    return images
