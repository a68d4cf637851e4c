"""Evaluation of representations: weighted kNN, two linear probes, semi-supervised
fine-tuning and collapse diagnostics, written to results.json.

kNN: Wu et al. (CVPR 2018), as the Barlow Twins / solo-learn monitors use it: cosine
similarity of L2-normalised features, the k nearest training examples vote with weight
exp(similarity / temperature); the bank is streamed to the device in chunks.
Linear probes: the paper's protocol (B.1, `bt_jax.classifier`: SGD on augmented views of
a frozen backbone) and a fast probe (full-batch L-BFGS softmax regression on cached,
standardised features, L2 chosen on a held-out part of the training split).
Semi-supervised (B.2): fine-tuning on 1% / 10% class-balanced label subsets.

As a command, evaluates a finished or running workdir and writes/updates its results.json:
  python -m bt_jax.evaluate --workdir runs/demo [--config configs/digits.py]
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bt_jax import checkpoint as ckpt_lib
from bt_jax import classifier, diagnostics, export, progress
from bt_jax import config as config_lib
from bt_jax.config import ConfigError
from bt_jax.features import extract_features, topk_accuracy
from bt_jax.models.factory import backbone_variables, create_model, init_variables


def l2_normalize(x) -> np.ndarray:
    """Rows of [N, F] scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_top_k(top_sims, top_labels, queries, bank, bank_labels, *, k: int):
    """The k most similar bank entries so far, updated with one chunk of the bank.

    top_sims, top_labels: [Q, k] (-inf / -1 where empty); queries: [Q, F]; bank: [C, F];
    bank_labels: [C] int32, -1 for padding rows (never chosen).
    """
    sims = jnp.where(bank_labels[None, :] >= 0,
                     jnp.matmul(queries, bank.T, precision=jax.lax.Precision.HIGHEST), -jnp.inf)
    sims = jnp.concatenate([top_sims, sims], axis=1)
    labels = jnp.concatenate([top_labels, jnp.broadcast_to(bank_labels, sims.shape[:1] +
                                                           bank_labels.shape)], axis=1)
    top_sims, idx = jax.lax.top_k(sims, k)
    return top_sims, jnp.take_along_axis(labels, idx, axis=1)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _vote(top_sims, top_labels, temperature, *, num_classes: int):
    """[Q, k] neighbour similarities and labels -> [Q, num_classes] weighted votes."""
    weights = jnp.where(top_labels >= 0, jnp.exp(top_sims / temperature), 0.0)
    return jnp.einsum("qk,qkc->qc", weights, jax.nn.one_hot(top_labels, num_classes))


def knn_scores(train_x, train_y, test_x, num_classes: int, *, k: int = 200,
               temperature: float = 0.1, bank_chunk: int = 16384,
               query_chunk: int = 1024) -> np.ndarray:
    """Weighted kNN class votes (Wu et al. 2018) of L2-normalised features.

    Each query's k most cosine-similar training examples vote for their class with weight
    exp(similarity / temperature). The bank is streamed to the device in chunks of
    `bank_chunk` rows (each sent once) while every query keeps a running top-k there, so
    memory is O(bank_chunk * F + Q * k), not O(N * F): ImageNet-sized banks fit.

    Args:
      train_x: [N, F] bank features; train_y: [N] int labels; test_x: [Q, F] queries.

    Returns:
      [Q, num_classes] float32 votes.
    """
    bank, queries = l2_normalize(train_x), l2_normalize(test_x)
    train_y = np.asarray(train_y, np.int32)
    k = min(k, bank.shape[0])
    q_slices = [slice(i, i + query_chunk) for i in range(0, queries.shape[0], query_chunk)]
    q_dev = [jnp.asarray(queries[s]) for s in q_slices]
    state = [(jnp.full((q.shape[0], k), -jnp.inf), jnp.full((q.shape[0], k), -1, jnp.int32))
             for q in q_dev]
    chunk = min(bank_chunk, bank.shape[0])
    for start in range(0, bank.shape[0], chunk):
        rows, labels = bank[start:start + chunk], train_y[start:start + chunk]
        pad = chunk - rows.shape[0]   # one static shape for every chunk
        rows = jnp.asarray(np.pad(rows, ((0, pad), (0, 0))))
        labels = jnp.asarray(np.pad(labels, (0, pad), constant_values=-1))
        state = [_merge_top_k(s, lab, q, rows, labels, k=k)
                 for (s, lab), q in zip(state, q_dev)]
    return np.concatenate([np.asarray(_vote(s, lab, temperature, num_classes=num_classes))
                           for s, lab in state])


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, k: int = 200,
                 temperature: float = 0.1, **chunks) -> dict:
    """{"top1", "top5"} (fractions) of the weighted kNN classifier of `knn_scores`."""
    scores = knn_scores(train_x, train_y, test_x, num_classes, k=k, temperature=temperature,
                        **chunks)
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5)}


def knn_top1(train_x, train_y, test_x, test_y, num_classes: int, **kwargs) -> float:
    """Weighted kNN top-1 accuracy (fraction); see `knn_scores`."""
    return knn_accuracy(train_x, train_y, test_x, test_y, num_classes, **kwargs)["top1"]


def standardize_features(train_x: np.ndarray, test_x: np.ndarray):
    """Both [N, F] arrays standardised with the train features' mean and std."""
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    return (train_x - mean) / std, (test_x - mean) / std


def principal_axes(x: np.ndarray, *, rtol: float = 1e-6,
                   max_features: int = 4096) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(basis [F, R], variances [R]): the principal axes of centred features x that carry
    variance (eigenvalues of x^T x / N above rtol times the largest) and the variance of x
    along each; (None, ones [F]) when x has more than max_features columns (the
    eigendecomposition would cost more than it saves).

    An L2-penalised linear model's optimal weights lie in the span of its training rows
    (the representer theorem: a component outside it changes no training logit and only
    adds to the penalty), so fitting on x @ basis gives the same probe with R instead of F
    weights per class. Upsampled or grey-replicated raw pixels have R far below F (digits
    at 32x32x3: R <= 64 of 3,072; Fashion-MNIST at 28x28x3: 784 of 2,352).

    Args:
      x: [N, F] standardised float32 features.
    """
    f = x.shape[1]
    if f > max_features:
        return None, np.ones(f, np.float32)
    gram = np.asarray(x.T @ x, np.float64) / x.shape[0]          # [F, F]
    eigvals, eigvecs = np.linalg.eigh(gram)
    keep = eigvals > rtol * max(eigvals[-1], 1e-30)
    return eigvecs[:, keep].astype(np.float32), eigvals[keep].astype(np.float32)


def _whitened_objective(params, z, y, variances, l2s):
    """Sum over the G strengths l2s of (mean cross-entropy + l2 / 2 |W|^2 of the original
    features' weights W), written in preconditioned coordinates (see `_fit_softmax_lbfgs`).

    params: {"u": [G, R, C], "b": [G, C]}; z: [N, R]; y: [N]; variances: [R]; l2s: [G].
    """
    num_grid, rank, num_classes = params["u"].shape
    scale = jnp.sqrt(1.0 + l2s[:, None] / variances[None, :])[:, :, None]      # d_i, [G, R, 1]
    w = (params["u"] / scale).transpose(1, 0, 2).reshape(rank, num_grid * num_classes)
    logits = (z @ w).reshape(-1, num_grid, num_classes) + params["b"]           # [N, G, C]
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.broadcast_to(y[:, None], logits.shape[:2])).mean(0)          # [G]
    penalty = 0.5 * l2s * jnp.sum(jnp.square(params["u"]) /
                                  (variances[None, :, None] + l2s[:, None, None]), axis=(1, 2))
    return jnp.sum(ce + penalty)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit_softmax_lbfgs(z, y, variances, l2s, *, num_classes: int, max_iter: int):
    """Full-batch L-BFGS fits of mean cross-entropy + l2/2 |W|^2, one per value of l2s.

    The features come whitened, z = (x @ basis) / sqrt(variances) (`principal_axes`), and
    the fit runs in the coordinates u_i = W_z,i * sqrt(1 + l2 / variances_i), where the
    data term's curvature (about I for whitened z) and the penalty's (l2 / variance_i along
    axis i) add up to a diagonal between the softmax curvature and 1. So L-BFGS converges
    in tens of iterations where raw, correlated pixels take thousands; the optimum is the
    same (W = basis @ (W_z / sqrt(variances))).

    The G problems are independent, so their sum has their optima as its optimum; one
    L-BFGS on the sum computes every strength's logits with one [N, R] x [R, G * C] product
    per evaluation, reading z once instead of G times (8x faster than vmapping G separate
    L-BFGS runs on 60,000 x 784 Fashion-MNIST pixels, PERF_NOTES 7).

    z: [N, R] float32; y: [N] int32; variances: [R]; l2s: [G].
    Returns {"w": [G, R, C] weights of z, "b": [G, C]}.
    """
    fun = functools.partial(_whitened_objective, z=z, y=y, variances=variances, l2s=l2s)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)
    params = {"u": jnp.zeros((l2s.shape[0], z.shape[1], num_classes)),
              "b": jnp.zeros((l2s.shape[0], num_classes))}

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    params = jax.lax.fori_loop(0, max_iter, step, (params, opt.init(params)))[0]
    return {"w": params["u"] / jnp.sqrt(1.0 + l2s[:, None] / variances)[:, :, None],
            "b": params["b"]}


def _holdout_split(labels: np.ndarray, fraction: float, seed: int):
    """(fit indices, held-out indices): about `fraction` of every class held out."""
    rng = np.random.default_rng([seed, 0xB0])
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[:int(round(fraction * len(idx)))])
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def fast_linear_probe(train_x, train_y, test_x, test_y, num_classes: int, *,
                      l2_grid=(1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                      holdout_fraction: float = 0.1,
                      max_iter: int = 100, seed: int = 0) -> dict:
    """Softmax regression on cached, standardised features, fitted by full-batch L-BFGS.

    The L2 strength is chosen from `l2_grid` by cross-entropy on a class-stratified held-out
    `holdout_fraction` of the training split (all strengths are fitted at once, vmapped),
    then the probe is refitted on the whole training split. The objective is mean
    cross-entropy + l2 / 2 * |W|^2 (scikit-learn's C is 1 / (l2 * N)). The features are
    first whitened along their principal axes (`principal_axes`; rank-deficient ones, such
    as upsampled pixels, keep only the axes that carry variance) and the fit is
    preconditioned (`_fit_softmax_lbfgs`): the optimum is unchanged, reached in tens of
    iterations, each cheaper.

    Args:
      train_x: [N, F]; train_y: [N] int; test_x: [Q, F]; test_y: [Q] int.

    Returns:
      {"top1", "top5", "l2"}: test accuracies (fractions) and the chosen strength.
    """
    train_x, test_x = standardize_features(np.asarray(train_x, np.float32),
                                           np.asarray(test_x, np.float32))
    basis, variances = principal_axes(train_x)
    if basis is not None:   # whitened: the same optimum, reached in far fewer iterations
        inv_std = 1.0 / np.sqrt(variances)
        train_x, test_x = (train_x @ basis) * inv_std, (test_x @ basis) * inv_std
    train_y = np.asarray(train_y, np.int32)
    variances = jnp.asarray(variances)
    grid = np.asarray(l2_grid, np.float32)
    fit_idx, held_idx = _holdout_split(train_y, holdout_fraction, seed)
    if len(grid) > 1 and len(held_idx):
        params = _fit_softmax_lbfgs(jnp.asarray(train_x[fit_idx]), jnp.asarray(train_y[fit_idx]),
                                    variances, jnp.asarray(grid), num_classes=num_classes,
                                    max_iter=max_iter)
        logits = np.einsum("nf,gfc->gnc", train_x[held_idx], np.asarray(params["w"]),
                           dtype=np.float64) + np.asarray(params["b"])[:, None]
        # Held-out cross-entropy: smoother than held-out accuracy, which on a few hundred
        # examples moves in steps of a fraction of a point and ties easily.
        log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        losses = -np.take_along_axis(log_p, train_y[held_idx][None, :, None], -1).mean((1, 2))
        best = float(l2_grid[int(np.argmin(losses))])
    else:
        best = float(l2_grid[0])
    params = _fit_softmax_lbfgs(jnp.asarray(train_x), jnp.asarray(train_y), variances,
                                jnp.asarray([best], jnp.float32), num_classes=num_classes,
                                max_iter=max_iter)
    scores = test_x @ np.asarray(params["w"][0]) + np.asarray(params["b"][0])
    return {"top1": topk_accuracy(scores, test_y, 1), "top5": topk_accuracy(scores, test_y, 5),
            "l2": best}


def _percent(r: dict) -> str:
    return f"top-1 {100 * r['top1']:.2f}%"


def evaluate_features(train_x, train_y, test_x, test_y, num_classes: int, eval_cfg,
                      label: Optional[str] = None) -> dict:
    """The cached-feature probes of one representation: {"linear_fast_top1",
    "linear_fast_top5", "linear_fast_l2", "knn_top1", "knn_top5"}; with a label (the
    representation's name), a progress line per probe with its time."""
    n = len(train_y)
    ticker = progress.Ticker(f"{label}: linear probe (fast, L-BFGS, {len(eval_cfg.fast_l2_grid)}"
                             " L2 strengths)", n, "training features")
    fast = fast_linear_probe(train_x, train_y, test_x, test_y, num_classes,
                             l2_grid=tuple(eval_cfg.fast_l2_grid),
                             holdout_fraction=eval_cfg.fast_holdout_fraction,
                             max_iter=eval_cfg.fast_max_iter)
    if label:
        ticker.done(_percent(fast))
    ticker = progress.Ticker(f"{label}: kNN (k={eval_cfg.knn_k})", n, "training features")
    knn = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k=eval_cfg.knn_k,
                       temperature=eval_cfg.knn_temperature, bank_chunk=eval_cfg.knn_bank_chunk)
    if label:
        ticker.done(_percent(knn))
    return {"linear_fast_top1": fast["top1"], "linear_fast_top5": fast["top5"],
            "linear_fast_l2": fast["l2"], "knn_top1": knn["top1"], "knn_top5": knn["top5"]}


def _head_config(e, seed: int, *, finetune: bool = False) -> "classifier.HeadConfig":
    if finetune:
        return classifier.HeadConfig(epochs=e.semi_epochs, batch_size=e.semi_batch_size,
                                     lr_head=e.semi_lr_head, lr_backbone=e.semi_lr_backbone,
                                     weight_decay=e.semi_weight_decay,
                                     crop_scale=tuple(e.linear_crop_scale),
                                     flip_prob=e.linear_flip_prob, finetune=True, seed=seed)
    return classifier.HeadConfig(epochs=e.linear_epochs, batch_size=e.linear_batch_size,
                                 lr_head=e.linear_lr, weight_decay=e.linear_weight_decay,
                                 crop_scale=tuple(e.linear_crop_scale),
                                 flip_prob=e.linear_flip_prob, seed=seed)


def probe_representation(config, encode, variables: dict, train_split, test_split,
                         train_x: np.ndarray, test_x: np.ndarray, stats,
                         label: str = "representation") -> dict:
    """Every probe of one representation.

    Args:
      encode: a `classifier.Encoder`; variables: its variables (read, never changed).
      train_split, test_split: the labelled uint8 splits (for the SGD probe's views).
      train_x, test_x: [N, F], [Q, F] cached features of the un-augmented images.
      stats: (mean [3], std [3]) of the pretraining's normalisation.
      label: the representation's name in the progress lines.

    Returns:
      {"linear_top1", "linear_top5" (the eval.linear_protocol probe's), "linear_fast_*",
       "linear_sgd_*" (when eval.linear_epochs > 0), "knn_top1", "knn_top5"}.
    """
    e = config.eval
    k = train_split.num_classes
    r = evaluate_features(train_x, train_split.labels, test_x, test_split.labels, k, e, label)
    if e.linear_epochs > 0:
        ticker = progress.Ticker(f"{label}: linear probe (SGD on augmented views)",
                                 e.linear_epochs, "epochs", every_s=10)
        sgd = classifier.train_and_test(
            encode, variables, (train_split.images, train_split.labels),
            (test_split.images, test_split.labels), k, _head_config(e, config.seed),
            image_size=config.data.image_size, mean=stats[0], std=stats[1],
            on_epoch=ticker.update)
        ticker.done(_percent(sgd))
        r["linear_sgd_top1"], r["linear_sgd_top5"] = sgd["top1"], sgd["top5"]
    r["linear_top1"] = r[f"linear_{e.linear_protocol}_top1"]
    r["linear_top5"] = r[f"linear_{e.linear_protocol}_top5"]
    return r


def semi_supervised(config, encode, variables: dict, train_split, test_split, stats) -> dict:
    """{"semi_1pct_top1", "semi_1pct_top5", ...}: fine-tuning on each eval.semi_fractions
    class-balanced label subset (drawn by config.seed), tested on the test split."""
    out = {}
    for fraction in config.eval.semi_fractions:
        subset = classifier.label_subset(train_split.labels, fraction, config.seed)
        ticker = progress.Ticker(f"fine-tuning on {100 * fraction:g}% of the labels "
                                 f"({len(subset):,} images)", config.eval.semi_epochs,
                                 "epochs", every_s=10)
        r = classifier.train_and_test(
            encode, variables, (train_split.images, train_split.labels),
            (test_split.images, test_split.labels), train_split.num_classes,
            _head_config(config.eval, config.seed, finetune=True),
            image_size=config.data.image_size, mean=stats[0], std=stats[1], subset=subset,
            on_epoch=ticker.update)
        ticker.done(_percent(r))
        name = f"semi_{100 * fraction:g}pct"
        out[f"{name}_top1"], out[f"{name}_top5"] = r["top1"], r["top5"]
        out[f"{name}_examples"] = int(len(subset))
    return out


def probe_subset(split, num_examples: int, seed: int):
    """The class-balanced subset of about num_examples images the probes fit on (drawn by
    seed, as `classifier.label_subset`); the split itself when num_examples is 0 or not
    smaller than it."""
    from bt_jax.data.datasets import Split  # pylint: disable=import-outside-toplevel
    if num_examples <= 0 or num_examples >= len(split):
        return split
    keep = classifier.label_subset(split.labels, num_examples / len(split), seed)
    return Split(split.images[keep], split.labels[keep], split.num_classes)


def pixel_features(images: np.ndarray, source_channels: int) -> np.ndarray:
    """[N, S, S, 3] normalised images -> [N, S * S * source_channels] raw-pixel features.

    Grayscale sources (source_channels = 1) are replicated to 3 identical channels for the
    encoders; their pixels count once here, which leaves the kNN's cosine similarities
    exactly as they are and the linear probe's optimum the same up to the scale of its L2
    grid, at a third of the cost (Fashion-MNIST: 784 features, not 2,352)."""
    return images[..., :source_channels].reshape(images.shape[0], -1)


def evaluate_all(config, backbone: nn.Module, trained: dict, random_init: dict,
                 train_split, test_split, stats=None, *, online_probe: Optional[dict] = None,
                 workdir: Optional[str] = None,
                 trained_features: Optional[tuple[np.ndarray, np.ndarray]] = None) -> dict:
    """Trained encoder, randomly initialised encoder and raw pixels, probed the same way.

    Args:
      backbone: the Flax backbone; trained, random_init: its {"params", "batch_stats"}
        (never changed: the probes only read them).
      train_split, test_split: labelled in-memory splits.
      stats: (mean [3], std [3]) the encoder's inputs were normalised with in pretraining;
        default: the train split's channel statistics.
      online_probe: the online probe's {"w": [F, C], "b": [C]}, tested here if given.
      workdir: where tsne.png goes (eval.tsne_points > 0).
      trained_features: ([N, F], [Q, F]) the trained encoder's features of the probe's
        training images and of test_split, if already extracted (the kNN monitor's last).

    Returns:
      {"linear_top1", "linear_top5", "linear_fast_*", "linear_sgd_*", "knn_top1",
       "knn_top5", "online_linear_top1"?, "semi_*"?, "num_train", "num_test",
       "diagnostics": {...} (spectrum of the test features, "collapse": verdict or None),
       "baselines": {"random_init": {...}, "pixels": {...}},
       "eval_seconds": {"trained", "random_init", "pixels"}: wall time of each part}.
    """
    from bt_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    stats = pipeline.channel_stats(train_split) if stats is None else stats
    e = config.eval
    semi_split = train_split   # fine-tuning draws its label subsets from all of it
    train_split = probe_subset(train_split, e.probe_train_examples, config.seed)
    train_img = pipeline.eval_arrays(train_split, *stats)
    test_img = pipeline.eval_arrays(test_split, *stats)
    encode = classifier.backbone_encoder(backbone)

    def features(variables, label):
        n, q = len(train_img), len(test_img)
        ticker = progress.Ticker(f"{label}: features of {n:,} training and {q:,} "
                                 f"{config_lib.eval_split_name(config)} images", n + q,
                                 "images")
        out = (extract_features(backbone, variables, train_img, e.batch_size, ticker=ticker),
               extract_features(backbone, variables, test_img, e.batch_size, ticker=ticker,
                                offset=n))
        ticker.done()
        return out

    reps = ["trained encoder"] + (["random init", "raw pixels"] if e.baselines else [])
    probes = [f"linear probe ({e.linear_protocol})", f"kNN (k={e.knn_k})"] + (
        [f"fine-tuning on {len(e.semi_fractions)} label fraction(s)"] if e.semi_fractions
        else [])
    progress.say(f"{', '.join(reps)} | {', '.join(probes)} | probes fit on "
                 f"{len(train_split):,} labelled training images")
    seconds, start = {}, time.perf_counter()
    if trained_features:
        progress.say("trained encoder: features from the kNN monitor's last call")
    train_x, test_x = trained_features or features(trained, "trained encoder")
    results = probe_representation(config, encode, trained, train_split, test_split, train_x,
                                   test_x, stats, "trained encoder")
    if online_probe is not None:
        scores = test_x @ np.asarray(online_probe["w"]) + np.asarray(online_probe["b"])
        results["online_linear_top1"] = topk_accuracy(scores, test_split.labels, 1)
        results["online_linear_top5"] = topk_accuracy(scores, test_split.labels, 5)
    results.update(semi_supervised(config, encode, trained, semi_split, test_split, stats))
    spectrum = diagnostics.spectrum_stats(test_x)
    results["diagnostics"] = {**{f"test_features_{k}": v
                                 for k, v in diagnostics.scalars(spectrum).items()},
                              "collapse": diagnostics.collapse_verdict(spectrum)}
    if workdir is not None and e.tsne_points > 0:
        diagnostics.plot_embedding_2d(test_x, test_split.labels,
                                      os.path.join(workdir, "tsne.png"),
                                      max_points=e.tsne_points, seed=config.seed)
    results.update(num_train=len(train_split), num_test=len(test_split),
                   eval_split=config_lib.eval_split_name(config))
    seconds["trained"] = time.perf_counter() - start
    if e.baselines:
        start = time.perf_counter()
        random_r = probe_representation(config, encode, random_init, train_split, test_split,
                                        *features(random_init, "random init"), stats,
                                        "random init")
        seconds["random_init"], start = time.perf_counter() - start, time.perf_counter()
        channels = train_split.images.shape[-1]
        pixels_r = probe_representation(config, classifier.pixel_encoder, {}, train_split,
                                        test_split, pixel_features(train_img, channels),
                                        pixel_features(test_img, channels), stats, "raw pixels")
        seconds["pixels"] = time.perf_counter() - start
        results["baselines"] = {"random_init": random_r, "pixels": pixels_r}
    results["eval_seconds"] = seconds
    return results


def format_table(results: dict) -> str:
    """The results as a small text table, top-1 accuracies in percent ("-" where a probe
    did not run), then the online probe, semi-supervised and collapse lines if present."""
    rows = [("Barlow Twins", results)]
    rows += [(name.replace("_", " "), r) for name, r in results.get("baselines", {}).items()]
    columns = [("linear (sgd)", "linear_sgd_top1"), ("linear (fast)", "linear_fast_top1"),
               ("kNN", "knn_top1")]
    columns = [c for c in columns if any(c[1] in r for _, r in rows)] or [
        ("linear top-1", "linear_top1"), ("kNN top-1", "knn_top1")]

    def cell(r, key):
        return f"{100 * r[key]:.1f}%" if key in r else "-"

    split = results.get("eval_split", "test")
    lines = [f"{'representation':<16}" + "".join(f" {title:>14}" for title, _ in columns)
             + f"   ({split} split)"]
    for name, r in rows:
        lines.append(f"{name:<16}" + "".join(f" {cell(r, key):>14}" for _, key in columns))
    extra = [f"{k}: {100 * v:.1f}%" for k, v in results.items()
             if (k.startswith("semi_") or k.startswith("online_")) and k.endswith("_top1")]
    if extra:
        lines.append("; ".join(extra))
    collapse = results.get("diagnostics", {}).get("collapse")
    if collapse:
        lines.append(f"warning: test features show {collapse}")
    return "\n".join(lines)


def write_results(results: dict, workdir: str) -> str:
    """Writes results into workdir/results.json, keeping the keys of an existing file that
    `results` does not set (so separate evaluations add up); returns its path."""
    path = os.path.join(workdir, "results.json")
    merged = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                merged = json.load(f)
        except (OSError, ValueError):
            merged = {}
    merged.update(results)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=2)
    os.replace(tmp, path)   # never a half-written results.json
    return path


def load_run(workdir: str, config) -> tuple[nn.Module, dict, Optional[dict], str]:
    """(backbone, its variables, the online probe's params or None, what was read) of a
    run: its newest readable checkpoint, else its exported backbone.msgpack. Nothing in
    the workdir is written or deleted."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    model = create_model(config)
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
        manager = ckpt_lib.CheckpointManager(ckpt_dir, every_steps=1)
        try:
            step, state = manager.read_latest()
        finally:
            manager.close()
        variables = backbone_variables(state)
        want = backbone_variables(init_variables(
            model, jax.random.key(0), config.data.image_size))
        if jax.tree.structure(want) != jax.tree.structure(variables) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(want),
                                                   jax.tree.leaves(variables))):
            raise ConfigError(f"The checkpoint at step {step} in {ckpt_dir!r} holds another "
                              "model than this config's model.* fields: evaluate with the "
                              "run's own config (leave out --config).")
        probe = state.get("probe")
        probe = None if not probe else probe["params"]
        return model.backbone, variables, probe, f"checkpoint of step {step}"
    if os.path.exists(os.path.join(workdir, export.BACKBONE_FILE)):
        backbone, variables = export.load_backbone(workdir)
        return backbone, variables, None, export.BACKBONE_FILE
    raise ConfigError(f"{workdir!r} holds neither checkpoints/ nor {export.BACKBONE_FILE}: "
                      "pass the --workdir of a training run.")


def evaluate_workdir(workdir: str, config) -> dict:
    """Evaluates a finished or running run and writes/updates its results.json."""
    from bt_jax.data import datasets, pipeline  # pylint: disable=import-outside-toplevel
    config_lib.validate(config)
    backbone, variables, probe, what = load_run(workdir, config)
    print(f"Evaluating {what} of {workdir!r}.", flush=True)
    d = config.data
    train_split, test_split = datasets.labelled_splits(d, config.seed)
    stats = pipeline.normalization_stats(datasets.pretrain_split(d, config.seed))
    random_init = backbone_variables(init_variables(
        create_model(config), jax.random.key(config.seed), d.image_size))
    results = evaluate_all(config, backbone, variables, jax.device_get(random_init),
                           train_split, test_split, stats, online_probe=probe, workdir=workdir)
    results["evaluated"] = what
    if jax.process_index() == 0:
        write_results(results, workdir)
    print(format_table(results), flush=True)
    return results


def _config_of_workdir(workdir: str):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"{path!r} does not exist: pass the --workdir of a "
                                     "training run, or --config.")
    with open(path) as f:
        saved = json.load(f)
    config = config_lib.base_config()   # fields added since the run keep their defaults
    config.update_from_flattened_dict(_flatten_json(saved))
    return config


def _flatten_json(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten_json(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def main(argv) -> None:
    """python -m bt_jax.evaluate --workdir RUN [--config FILE --config.FIELD=VALUE]"""
    import sys  # pylint: disable=import-outside-toplevel
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    logging.set_verbosity(logging.WARNING)   # Orbax logs every read at INFO
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    workdir = flags.FLAGS.workdir
    try:
        config = flags.FLAGS.config or _config_of_workdir(workdir)
        evaluate_workdir(workdir, config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # noqa: E402
    from ml_collections import config_flags  # noqa: E402
    config_flags.DEFINE_config_file(
        "config", None, "A recipe with get_config() (default: the run's config.json); "
        "fields can be overridden, e.g. --config.eval.linear_epochs=10.", lock_config=True)
    absl_flags.DEFINE_string("workdir", None, "The run to evaluate (its checkpoints/ or "
                             "backbone.msgpack, and config.json).")
    absl_flags.mark_flag_as_required("workdir")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
