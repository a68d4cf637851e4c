"""The fast linear probe: softmax regression on cached, standardised features, fitted by
full-batch L-BFGS, its L2 strength chosen on a held-out part of the training split.
Protocol "linear_fast"; settings eval.linear_fast.l2_grid, .holdout_fraction and
.max_iter.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bt_jax.data.subsets import class_balanced
from bt_jax.evals.common import Protocol, need, standardize_features, topk_accuracy


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
    held = class_balanced(labels, lambda n: int(round(fraction * n)),
                          np.random.default_rng([seed, 0xB0]))
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



def probe(train_x, train_y, test_x, test_y, num_classes: int, fast_cfg) -> dict:
    """{"linear_fast_top1", "linear_fast_top5", "linear_fast_l2"} of cached features with
    eval.linear_fast's grid, held-out fraction and iterations."""
    fast = fast_linear_probe(train_x, train_y, test_x, test_y, num_classes,
                             l2_grid=tuple(fast_cfg.l2_grid),
                             holdout_fraction=fast_cfg.holdout_fraction,
                             max_iter=fast_cfg.max_iter)
    return {"linear_fast_top1": fast["top1"], "linear_fast_top5": fast["top5"],
            "linear_fast_l2": fast["l2"]}


def title(cfg) -> str:
    return f"linear probe (fast, L-BFGS, {len(cfg.l2_grid)} L2 strengths)"


def check_settings(cfg) -> None:
    """eval.linear_fast: a grid of non-negative strengths, a held-out fraction in [0, 1)."""
    need(len(cfg.l2_grid) > 0 and all(v >= 0 for v in cfg.l2_grid),
         f"eval.linear_fast.l2_grid must be non-negative strengths; got {cfg.l2_grid}.")
    need(0.0 <= cfg.holdout_fraction < 1.0, "eval.linear_fast.holdout_fraction must be in "
         f"[0, 1); got {cfg.holdout_fraction}.")
    need(cfg.max_iter > 0, f"eval.linear_fast.max_iter must be positive; got {cfg.max_iter}.")


PROTOCOL = Protocol(
    name="linear_fast", title=title,
    run=lambda ctx, rep, cfg: probe(rep.train_x, ctx.train.labels, rep.test_x,
                                    ctx.test.labels, ctx.train.num_classes, cfg),
    # L-BFGS softmax regression on cached features, L2 chosen on a held-out part of the
    # training split.
    defaults={"l2_grid": (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "holdout_fraction": 0.1,
              "max_iter": 100},
    check=check_settings)
