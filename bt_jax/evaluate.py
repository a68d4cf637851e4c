"""Evaluation of frozen representations: weighted kNN and a linear probe.

kNN: Wu et al. (CVPR 2018), as the Barlow Twins / solo-learn monitors use it: cosine
similarity of L2-normalised features, the k nearest training examples vote with weight
exp(similarity / temperature).
Linear probe: a softmax classifier on frozen, standardised features, trained with SGD
(momentum 0.9, cosine learning rate, weight decay), as in the paper's B.1 but on
precomputed features of un-augmented images.
"""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def extract_features(backbone: nn.Module, variables: dict, images: np.ndarray,
                     batch_size: int = 512) -> np.ndarray:
    """Backbone features of images in eval mode (running BatchNorm statistics).

    Args:
      backbone: module mapping [B, S, S, 3] -> [B, F]; variables: its {"params", "batch_stats"}.
      images: [N, S, S, 3] float32, normalised.

    Returns:
      [N, F] float32 numpy features.
    """
    apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    out = []
    for i in range(0, images.shape[0], batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - chunk.shape[0] if images.shape[0] > batch_size else 0
        if pad:  # one static shape for every call: no recompilation for the last batch
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        feats = np.asarray(apply(variables, chunk))
        out.append(feats[: feats.shape[0] - pad])
    return np.concatenate(out).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _knn_predict(train_x, train_y, query, *, num_classes: int, k: int, temperature):
    sims = query @ train_x.T                                  # [Q, N]
    top_sims, top_idx = jax.lax.top_k(sims, k)                # [Q, k]
    weights = jnp.exp(top_sims / temperature)
    votes = jax.nn.one_hot(train_y[top_idx], num_classes) * weights[..., None]
    return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_top1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
             test_y: np.ndarray, num_classes: int, *, k: int = 200,
             temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN top-1 accuracy (fraction) on L2-normalised [N, F] features."""
    def l2n(x):
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    tr, te = jnp.asarray(l2n(train_x)), l2n(test_x)
    k = min(k, tr.shape[0])
    preds = [np.asarray(_knn_predict(tr, jnp.asarray(train_y), jnp.asarray(te[i:i + chunk]),
                                     num_classes=num_classes, k=k, temperature=temperature))
             for i in range(0, te.shape[0], chunk)]
    return float(np.mean(np.concatenate(preds) == np.asarray(test_y)))


def standardize_features(train_x: np.ndarray, test_x: np.ndarray):
    """Both [N, F] arrays standardised with the train features' mean and std."""
    mean = train_x.mean(0)
    std = train_x.std(0) + 1e-6
    return (train_x - mean) / std, (test_x - mean) / std


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _train_linear(x, y, key, *, num_classes: int, epochs: int, batch_size: int, lr,
                  weight_decay):
    n, f = x.shape
    steps_per_epoch = max(n // batch_size, 1)
    bs = min(batch_size, n)
    tx = optax.sgd(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch), momentum=0.9)
    params = {"w": jnp.zeros((f, num_classes)), "b": jnp.zeros((num_classes,))}

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return ce + 0.5 * weight_decay * jnp.sum(jnp.square(p["w"]))

    def epoch(carry, key):
        p, s = carry
        perm = jax.random.permutation(key, n)[: steps_per_epoch * bs].reshape(steps_per_epoch, bs)

        def step(carry, idx):
            p, s = carry
            g = jax.grad(loss_fn)(p, x[idx], y[idx])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, s), perm)[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    return params


def linear_probe_top1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      test_y: np.ndarray, num_classes: int, *, epochs: int = 100,
                      batch_size: int = 256, lr: float = 0.1, weight_decay: float = 1e-6,
                      seed: int = 0) -> float:
    """Top-1 accuracy (fraction) of a linear softmax classifier on frozen [N, F] features."""
    tr, te = standardize_features(np.asarray(train_x, np.float32), np.asarray(test_x, np.float32))
    params = _train_linear(jnp.asarray(tr), jnp.asarray(train_y, jnp.int32), jax.random.key(seed),
                           num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                           weight_decay=weight_decay)
    pred = np.argmax(np.asarray(te @ np.asarray(params["w"]) + np.asarray(params["b"])), axis=1)
    return float(np.mean(pred == np.asarray(test_y)))


def evaluate_features(train_x, train_y, test_x, test_y, num_classes: int, eval_cfg) -> dict:
    """{"linear_top1", "knn_top1"} for one set of features."""
    return {
        "linear_top1": linear_probe_top1(
            train_x, train_y, test_x, test_y, num_classes, epochs=eval_cfg.linear_epochs,
            batch_size=eval_cfg.linear_batch_size, lr=eval_cfg.linear_lr,
            weight_decay=eval_cfg.linear_weight_decay),
        "knn_top1": knn_top1(train_x, train_y, test_x, test_y, num_classes, k=eval_cfg.knn_k,
                             temperature=eval_cfg.knn_temperature),
    }


def evaluate_all(config, backbone: nn.Module, trained: dict, random_init: dict,
                 train_split, test_split, stats=None) -> dict:
    """Trained encoder, randomly initialised encoder and raw pixels, probed the same way.

    stats: (mean [3], std [3]) the encoder's inputs were normalised with in pretraining;
    default: the train split's channel statistics.

    Returns {"linear_top1", "knn_top1", "num_train", "num_test",
             "baselines": {"random_init": {...}, "pixels": {...}}}.
    """
    from bt_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    stats = pipeline.channel_stats(train_split) if stats is None else stats
    train_img = pipeline.eval_arrays(train_split, *stats)
    test_img = pipeline.eval_arrays(test_split, *stats)
    k = train_split.num_classes
    e = config.eval

    def probe(variables):
        return evaluate_features(extract_features(backbone, variables, train_img, e.batch_size),
                                 train_split.labels,
                                 extract_features(backbone, variables, test_img, e.batch_size),
                                 test_split.labels, k, e)

    results = {**probe(trained), "num_train": len(train_split), "num_test": len(test_split)}
    if e.baselines:
        results["baselines"] = {
            "random_init": probe(random_init),
            "pixels": evaluate_features(train_img.reshape(len(train_split), -1),
                                        train_split.labels,
                                        test_img.reshape(len(test_split), -1),
                                        test_split.labels, k, e),
        }
    return results


def format_table(results: dict) -> str:
    """The results as a small text table, accuracies in percent."""
    rows = [("Barlow Twins", results)]
    rows += [(name.replace("_", " "), r) for name, r in results.get("baselines", {}).items()]
    lines = [f"{'representation':<16} {'linear top-1':>13} {'kNN top-1':>10}"]
    for name, r in rows:
        lines.append(f"{name:<16} {100 * r['linear_top1']:>12.1f}% {100 * r['knn_top1']:>9.1f}%")
    return "\n".join(lines)


def write_results(results: dict, workdir: str) -> str:
    """Writes results.json into workdir; returns its path."""
    path = os.path.join(workdir, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path
