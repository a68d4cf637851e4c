"""Weighted kNN (Wu et al., CVPR 2018) on frozen features, as the Barlow Twins and
solo-learn monitors use it: cosine similarity of L2-normalised features, the k nearest
training examples vote with weight exp(similarity / temperature); the bank is streamed to
the device in chunks. Protocol "knn"; settings eval.knn.k, eval.knn.temperature and
eval.knn.bank_chunk (also the kNN monitor's).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.evals.common import Protocol, l2_normalize, need, topk_accuracy


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



def probe(train_x, train_y, test_x, test_y, num_classes: int, knn_cfg) -> dict:
    """{"knn_top1", "knn_top5"} of cached features, with eval.knn's k, temperature and bank
    chunk."""
    knn = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k=knn_cfg.k,
                       temperature=knn_cfg.temperature, bank_chunk=knn_cfg.bank_chunk)
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"]}


def check_settings(cfg) -> None:
    """eval.knn: k, temperature and the bank's chunk must be positive."""
    need(cfg.k > 0 and cfg.bank_chunk > 0, "eval.knn.k and eval.knn.bank_chunk must be "
         f"positive; got {cfg.k}, {cfg.bank_chunk}.")
    need(cfg.temperature > 0, f"eval.knn.temperature must be positive; got {cfg.temperature}.")


PROTOCOL = Protocol(
    name="knn", title=lambda cfg: f"kNN (k={cfg.k})",
    run=lambda ctx, rep, cfg: probe(rep.train_x, ctx.train.labels, rep.test_x,
                                    ctx.test.labels, ctx.train.num_classes, cfg),
    # Weighted kNN (Wu et al. 2018) on L2-normalised features; the bank goes to the device
    # in chunks of bank_chunk rows.
    defaults={"k": 200, "temperature": 0.1, "bank_chunk": 16384}, check=check_settings)
