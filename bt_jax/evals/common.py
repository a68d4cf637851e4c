"""What every evaluation protocol shares: the Protocol interface and its inputs, frozen-
encoder features of image arrays, top-k accuracy, feature standardisation, the probes'
class-balanced training subset and raw-pixel features."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from bt_jax import parallel, progress
from bt_jax.errors import ConfigError
from bt_jax.data.subsets import class_balanced


@dataclasses.dataclass(frozen=True)
class Context:
    """The data every protocol of one evaluation sees.

    train: the labelled split the probes fit on (`probe_subset` of the train split).
    test: the labelled split they are scored on (test, or the validation part).
    labelled: the whole labelled train split (fine-tuning draws its label subsets here).
    stats: (mean [3], std [3]) the encoder's inputs were normalised with in pretraining.
    seed: the run's seed (label subsets, heads' initialisation, augmentations).
    image_size: the images' side in pixels (the views of the SGD probe and fine-tuning).
    """
    train: Any
    test: Any
    labelled: Any
    stats: tuple
    seed: int
    image_size: int


@dataclasses.dataclass(frozen=True)
class Representation:
    """One representation under evaluation (the trained encoder, a baseline).

    label: its name in progress lines. encode: a `classifier.Encoder`; variables: its
    variables (read, never changed). train_x, test_x: [N, F], [Q, F] cached features of
    the un-augmented images of Context.train and Context.test.
    """
    label: str
    encode: Callable
    variables: dict
    train_x: np.ndarray
    test_x: np.ndarray


@dataclasses.dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: one module of bt_jax/evals/ defines one as `PROTOCOL`.

    Each callable receives the protocol's own settings, config.eval.<name>.

    name: its name in config.eval.protocols (the module's name) and its settings' section.
    title: settings -> how the plan line names it, e.g. "kNN (k=200)".
    run: (Context, Representation, settings) -> {result key: value}, merged into
      results.json.
    defaults: {field: default} of its settings.
    check: settings -> None; raises ConfigError naming the field and the fix.
    wanted: settings -> False where they ask for no work (no epochs, no label fractions);
      it is then skipped although listed.
    baselines: also run on the random-init and raw-pixel baselines.
    """
    name: str
    title: Callable[[Any], str]
    run: Callable[[Context, Representation, Any], dict]
    defaults: dict = dataclasses.field(default_factory=dict)
    check: Callable[[Any], None] = lambda cfg: None
    wanted: Callable[[Any], bool] = lambda cfg: True
    baselines: bool = True


def need(ok: bool, message: str) -> None:
    """ConfigError(message) unless ok: a protocol's check of its settings."""
    if not ok:
        raise ConfigError(message)


def feature_fn(backbone: nn.Module, printer: Optional[Callable[[str], None]] = None):
    """jit((variables, [B, S, S, 3] images) -> [B, F] features), inference mode: compile it
    once and pass it to `extract_features` as `apply` where features are taken often.
    With a printer, its first call announces the compile (`progress.CompilesAhead`)."""
    jitted = jax.jit(lambda v, x: backbone.apply(v, x, train=False),
                     compiler_options=parallel.compiler_options())
    if printer is None:
        return jitted
    return progress.CompilesAhead("the feature extractor", jitted, printer)


def batched_apply(fn: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int, *,
                  on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """fn applied to images [N, ...] in batches of batch_size, outputs concatenated ([N, ...]).

    The last batch is padded with zeros to batch_size (and its padding rows dropped), so fn
    sees one static shape and compiles once. on_batch(done) after each batch.
    """
    out = []
    for i in range(0, images.shape[0], batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - chunk.shape[0] if images.shape[0] > batch_size else 0
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(fn(chunk))[:chunk.shape[0] - pad])
        if on_batch is not None:
            on_batch(i + chunk.shape[0] - pad)
    return np.concatenate(out)


def extract_features(backbone: nn.Module, variables: dict, images: np.ndarray,
                     batch_size: int = 512, *, apply=None,
                     ticker: Optional[progress.Ticker] = None, offset: int = 0) -> np.ndarray:
    """Backbone features of images in eval mode (running BatchNorm statistics).

    Args:
      backbone: module mapping [B, S, S, 3] -> [B, F]; variables: its {"params", "batch_stats"}.
      images: [N, S, S, 3] float32, normalised.
      apply: `feature_fn(backbone)`, if one is already compiled.
      ticker: a progress.Ticker told offset + the images done after each batch.

    Returns:
      [N, F] float32 numpy features.
    """
    apply = apply or feature_fn(backbone)
    on_batch = None if ticker is None else (lambda done: ticker.update(offset + done))
    return batched_apply(lambda chunk: apply(variables, chunk), images, batch_size,
                         on_batch=on_batch).astype(np.float32)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of scores [N, C] whose label [N] is among their k highest scores
    (k is capped at C, so top-5 of a 3-class problem is 1.0)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def l2_normalize(x) -> np.ndarray:
    """Rows of [N, F] scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def standardize_features(train_x: np.ndarray, test_x: np.ndarray):
    """Both [N, F] arrays standardised with the train features' mean and std."""
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    return (train_x - mean) / std, (test_x - mean) / std


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset holding about `fraction` of the labels.

    Every class gets max(1, round(fraction * N / C)) examples (or all it has, if fewer),
    drawn at random by `seed`: the same seed gives the same subset. For datasets with an
    official subset list (ImageNet's 1% / 10% of SimCLR) pass that list instead.

    Args:
      labels: [N] int class labels (labels < 0, unlabelled, are never chosen).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}.")
    labels = np.asarray(labels)
    per_class = max(1, int(round(fraction * np.sum(labels >= 0) /
                                 len(np.unique(labels[labels >= 0])))))
    return class_balanced(labels, lambda n: per_class,
                          np.random.default_rng([seed, int(round(fraction * 1e6))]))


def probe_subset(split, num_examples: int, seed: int):
    """The class-balanced subset of about num_examples images the probes fit on (drawn by
    seed, as `label_subset`); the split itself when num_examples is 0 or not smaller than
    it."""
    if num_examples <= 0 or num_examples >= len(split):
        return split
    keep = label_subset(split.labels, num_examples / len(split), seed)
    return dataclasses.replace(split, images=split.images[keep], labels=split.labels[keep])


def pixel_features(images: np.ndarray, source_channels: int) -> np.ndarray:
    """[N, S, S, 3] normalised images -> [N, S * S * source_channels] raw-pixel features.

    Grayscale sources (source_channels = 1) are replicated to 3 identical channels for the
    encoders; their pixels count once here, which leaves the kNN's cosine similarities
    exactly as they are and the linear probe's optimum the same up to the scale of its L2
    grid, at a third of the cost (Fashion-MNIST: 784 features, not 2,352)."""
    return images[..., :source_channels].reshape(images.shape[0], -1)
