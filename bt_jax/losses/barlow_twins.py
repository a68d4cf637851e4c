"""The Barlow Twins objective as pure functions of arrays.

Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
ICML 2021 (arXiv 2103.03230), Eq. (1) and Algorithm 1.

Everything here is a pure function of arrays: no Flax state and no TensorFlow, so it
works under `jit`, `grad`, `vmap` and `shard_map`. Inside `shard_map`, pass the mesh
axis as `axis_name`: the batch mean, the batch variance and the cross-correlation are
then summed over that axis, every device holds the global matrix, and the value and the
gradients equal those of the global batch on one device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bt_jax.errors import ConfigError
from bt_jax.losses.common import (Array, AxisName, Objective, check_embeddings, check_pair,
                                  check_weight, global_count, global_rows, global_sum,
                                  weighted_sum)

REDUNDANCY_MODES = ("cross", "auto")
# How embeddings are normalised before C = Z_A^T Z_B / N: each feature over the batch (the
# paper), each embedding over its features (the paper's Table 5 ablation), or not at all.
NORMALIZATIONS = ("batch", "feature", "none")


def standardize(z: Array, *, axis_name: AxisName = None, eps: float = 1e-5) -> Array:
    """Standardises each feature over the (global) batch.

    Mean 0 and biased variance 1, as BatchNorm1d(affine=False) in training mode:
    (z - mean) / sqrt(var + eps).

    Args:
      z: [N_local, D] embeddings.
      axis_name: mesh axis over which the batch is split, or None.
      eps: added to the variance.

    Returns:
      [N_local, D] float32 standardised embeddings.
    """
    z = check_embeddings(z, "z")
    z = z.astype(jnp.float32)
    n = global_count(z, axis_name)
    mean = global_sum(z, axis_name) / n
    centred = z - mean
    var = global_sum(jnp.square(centred), axis_name) / n
    return centred * jax.lax.rsqrt(var + eps)


def standardize_features(z: Array, *, eps: float = 1e-5) -> Array:
    """Standardises each embedding over its own D features (mean 0, biased variance 1):
    the paper's "normalization along the feature dimension" ablation. [N, D] -> [N, D]
    float32; needs no collective, rows are independent."""
    z = check_embeddings(z, "z")
    z = z.astype(jnp.float32)
    centred = z - jnp.mean(z, axis=1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True) + eps)


def normalize(z: Array, mode: str = "batch", *, axis_name: AxisName = None,
              eps: float = 1e-5) -> Array:
    """[N_local, D] -> [N_local, D] float32, normalised as NORMALIZATIONS names."""
    if mode == "batch":
        return standardize(z, axis_name=axis_name, eps=eps)
    if mode == "feature":
        return standardize_features(z, eps=eps)
    if mode == "none":
        z = check_embeddings(z, "z")
        return z.astype(jnp.float32)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {mode!r}.")


def correlation_of_standardized(a: Array, b: Array, *, axis_name: AxisName = None) -> Array:
    """a^T b / N for already standardised [N_local, D] arrays: [D, D], summed over devices."""
    n = global_count(a, axis_name)
    c = jnp.einsum("nd,ne->de", a, b, precision=jax.lax.Precision.HIGHEST)
    if axis_name is not None:
        c = jax.lax.psum(c, axis_name)
    return c / n


def cross_correlation(z_a: Array, z_b: Array, *, axis_name: AxisName = None,
                      eps: float = 1e-5) -> Array:
    """The cross-correlation matrix C of two batches of embeddings.

    Each feature of each view is standardised over the batch, then
    C = Z_A^T Z_B / N.

    Args:
      z_a: [N_local, D] embeddings of view A.
      z_b: [N_local, D] embeddings of view B (same rows, other view).
      axis_name: mesh axis over which the batch is split (inside shard_map), or None.
      eps: added to the batch variance.

    Returns:
      [D, D] float32 matrix; entry (i, j) is the correlation of feature i of view A with
      feature j of view B over the global batch.
    """
    z_a, z_b = check_pair(z_a, z_b)
    a = standardize(z_a, axis_name=axis_name, eps=eps)
    b = standardize(z_b, axis_name=axis_name, eps=eps)
    return correlation_of_standardized(a, b, axis_name=axis_name)


CORRELATION_PATHS = ("auto", "direct", "gram")


def choose_correlation_path(n_global: int, d: int, path: str = "auto") -> str:
    """"direct" (form the [D, D] matrix) or "gram" (the [N, N] Gram matrices).

    Value and gradients cost 6 N D^2 FLOPs on the direct path and 8 N^2 D on the Gram
    path (its derivative written out; 12 N^2 D under autodiff); on many devices each
    device sends 2 (W-1)/W D^2 floats on the direct path (the all-reduce of C) and
    2 (W-1)/W N D on the Gram path (the all-gather of both views; its backward pass sends
    nothing). "auto" takes the Gram path for 2N <= D with the global batch N, where it
    does fewer FLOPs and sends at most half the bytes. The rule was measured on a 2-core
    CPU at D = 2048 with autodiff's 12 N^2 D (experiments/PERF_NOTES.md, section 1): Gram
    6.5x as fast at N = 256, 1.09x at N = 1024, 0.77x at N = 1536.
    """
    if path not in CORRELATION_PATHS:
        raise ValueError(f"path must be one of {CORRELATION_PATHS}; got {path!r}.")
    if path != "auto":
        return path
    return "gram" if 2 * n_global <= d else "direct"


def sum_squared_correlation_gram(a: Array, b: Array, *, axis_name: AxisName = None) -> Array:
    """sum_ij (a^T b / N)_ij^2 without forming the [D, D] matrix.

    ||A^T B||_F^2 = trace(A A^T B B^T) = sum_nm (A A^T)_nm (B B^T)_nm, so the sum costs
    two [N, N] Gram matrices, O(N^2 D), instead of O(N D^2). With axis_name, each device
    all-gathers both views ([N, D]: N D floats moved, against D^2 for a psum of C), forms
    its own rows of the two Gram matrices ([N_local, N]) and the partial sums are psum'd.

    The derivative is written out (`_gram_sum_jvp`), not left to autodiff: the Gram
    matrices are symmetric, so d/dA = 2 (B B^T) A / N^2, and each device's rows of it are
    its own Gram rows times the gathered A, which the forward pass already holds. Its
    transpose (the backward pass) sends nothing; autodiff's transpose of the all-gathers
    would reduce-scatter both [N, D] cotangents, and XLA:TPU compiled that into [N, D]
    all-reduces and gathered the views again: 2.2x the bytes of the two all-gathers
    (docs/scaling.md, communication). Value and gradient cost 8 N^2 D FLOPs, not 12.
    Forward mode (jvp, jacfwd) and higher derivatives work as for any JAX function.

    Args:
      a, b: [N_local, D] standardised float32 embeddings (b may be a, for the
        auto-correlation).

    Returns:
      float32 scalar, the same on every device.
    """
    return _gram_sum(a, b, axis_name)


_HIGHEST = jax.lax.Precision.HIGHEST


def _gathered(x: Array, axis_name: AxisName) -> Array:
    """[N_local, D] -> [N, D]: every device's rows, in device order."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _total(x: Array, axis_name: AxisName) -> Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _gram_rows(a: Array, b: Array, axis_name: AxisName):
    """This device's rows of both Gram matrices ([N_local, N] each), the gathered views
    ([N, D] each; one gather where b is a) and the global N."""
    all_a = _gathered(a, axis_name)
    all_b = all_a if b is a else _gathered(b, axis_name)
    g_a = jnp.matmul(a, all_a.T, precision=_HIGHEST)
    g_b = g_a if b is a else jnp.matmul(b, all_b.T, precision=_HIGHEST)
    return g_a, g_b, all_a, all_b, global_count(a, axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _gram_sum(a: Array, b: Array, axis_name: AxisName) -> Array:
    g_a, g_b, _, _, n = _gram_rows(a, b, axis_name)
    return _total(jnp.sum(g_a * g_b), axis_name) / jnp.square(n)


@_gram_sum.defjvp
def _gram_sum_jvp(axis_name, primals, tangents):
    """d(sum G_A G_B / N^2) = 2 / N^2 sum(dA * (G_B A) + dB * (G_A B)); this device's rows
    of G_B A are g_b @ all_a. Linear in the tangents with no collective but the psum of a
    scalar, whose transpose sends nothing."""
    a, b = primals
    t_a, t_b = tangents
    g_a, g_b, all_a, all_b, n = _gram_rows(a, b, axis_name)
    scale = 2.0 / jnp.square(n)
    value = _total(jnp.sum(g_a * g_b), axis_name) / jnp.square(n)
    d_a = scale * jnp.matmul(g_b, all_a, precision=_HIGHEST)          # [N_local, D]
    d_b = d_a if b is a else scale * jnp.matmul(g_a, all_b, precision=_HIGHEST)
    return value, _total(jnp.sum(t_a * d_a) + jnp.sum(t_b * d_b), axis_name)


def _check_batch(z: Array, axis_name: AxisName) -> None:
    """A correlation over the batch needs at least 2 rows in the global batch."""
    if global_rows(z, axis_name) < 2:
        raise ValueError(
            f"The Barlow Twins loss needs a global batch of at least 2 embeddings; got "
            f"{global_rows(z, axis_name)} (shape {tuple(z.shape)}). With one row every "
            "feature's batch variance is 0, C is 0, the loss is D and its gradient 0: "
            "use a larger batch (the paper's is 2048).")


def _safe_sqrt(x: Array) -> Array:
    """sqrt for monitoring: no gradient, and no division anywhere (checkify-clean at 0)."""
    x = jax.lax.stop_gradient(jnp.maximum(x, 0.0))
    return jnp.where(x > 0, jnp.sqrt(jnp.where(x > 0, x, 1.0)), 0.0)


def on_diagonal_term(c: Array) -> Array:
    """Invariance term sum_i (1 - C_ii)^2 of a [D, D] correlation matrix: scalar."""
    return jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))


def off_diagonal_term(c: Array) -> Array:
    """Redundancy-reduction term sum_{i != j} C_ij^2 of a [D, D] matrix: scalar."""
    return jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(jnp.diagonal(c)))


def barlow_twins_terms(z_a: Array, z_b: Array, *, redundancy: str = "cross",
                       normalization: str = "batch", axis_name: AxisName = None,
                       eps: float = 1e-5, path: str = "auto") -> dict[str, Array]:
    """Both terms of the loss, unweighted, for logging and ablations.

    Args:
      z_a, z_b: [N_local, D] embeddings of the two views.
      redundancy: "cross" takes the off-diagonal term from the cross-correlation of the
        two views (the paper's loss); "auto" takes it from view A's auto-correlation
        Z_A^T Z_A / N (the information-bottleneck variant of the paper's Appendix A).
      normalization: "batch" (the paper), "feature" or "none" (ablations; see
        `normalize`).
      axis_name: mesh axis over which the batch is split, or None.
      eps: added to the batch variance.
      path: "direct" forms C ([D, D], O(N D^2)); "gram" sums C_ij^2 through the [N, N]
        Gram matrices (O(N^2 D); `sum_squared_correlation_gram`) and C_ii as row sums;
        "auto" (default) takes "gram" when 2N <= D for the global batch N. Both
        give the same values and gradients up to float32 rounding.

    Returns:
      float32 scalars: "on_diag" and "off_diag" (the two terms), and for monitoring the
      cross-correlation C itself: "c_diag_mean" (mean of C_ii; 1 when the views agree)
      and "c_offdiag_rms" (root mean square of C_ij, i != j; 0 when decorrelated).
    """
    if redundancy not in REDUNDANCY_MODES:
        raise ValueError(f"redundancy must be one of {REDUNDANCY_MODES}; got {redundancy!r}.")
    z_a, z_b = check_pair(z_a, z_b)
    _check_batch(z_a, axis_name)
    a = normalize(z_a, normalization, axis_name=axis_name, eps=eps)
    b = normalize(z_b, normalization, axis_name=axis_name, eps=eps)
    d = a.shape[1]
    if choose_correlation_path(global_rows(a, axis_name), d, path) == "direct":
        c = correlation_of_standardized(a, b, axis_name=axis_name)
        c_diag, c_off = jnp.diagonal(c), off_diagonal_term(c)
        redundant_off = c_off if redundancy == "cross" else off_diagonal_term(
            correlation_of_standardized(a, a, axis_name=axis_name))
    else:
        n = global_count(a, axis_name)
        c_diag = global_sum(a * b, axis_name) / n                        # C_ii, [D]
        c_off = sum_squared_correlation_gram(a, b, axis_name=axis_name) - jnp.sum(
            jnp.square(c_diag))
        if redundancy == "cross":
            redundant_off = c_off
        else:
            auto_diag = global_sum(jnp.square(a), axis_name) / n
            redundant_off = sum_squared_correlation_gram(a, a, axis_name=axis_name) - jnp.sum(
                jnp.square(auto_diag))
    return {"on_diag": jnp.sum(jnp.square(1.0 - c_diag)), "off_diag": redundant_off,
            "c_diag_mean": jnp.mean(c_diag),
            "c_offdiag_rms": _safe_sqrt(c_off / max(d * (d - 1), 1))}


def barlow_twins_loss(z_a: Array, z_b: Array, *, lambd: float = 0.0051,
                      redundancy: str = "cross", axis_name: AxisName = None,
                      eps: float = 1e-5, path: str = "auto") -> Array:
    """Barlow Twins loss: sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

    Args:
      z_a, z_b: [N_local, D] embeddings of the two views (any float dtype; computed in
        float32).
      lambd: weight of the redundancy-reduction (off-diagonal) term.
      redundancy: "cross" (paper) or "auto" (off-diagonal term from z_a's
        auto-correlation).
      axis_name: mesh axis over which the batch is split, inside shard_map; mean,
        variance and C are then over the global batch.
      eps: added to the batch variance.
      path: "auto" | "direct" | "gram": how sum C_ij^2 is computed (see
        `barlow_twins_terms`); the value does not depend on it beyond float32 rounding.

    Returns:
      float32 scalar, the same on every device.

    Raises:
      ValueError: lambd < 0, shapes that are not two equal [N, D], or a global N < 2.
      TypeError: lambd not a real number; embeddings that are not real numbers (complex
        ones would lose their imaginary part), or not array-like.

    What is checked, and when: shapes, dtypes and N are static, so they are checked at
    trace time under jit, grad and vmap too. lambd is checked wherever it is a concrete
    value (a Python or NumPy number, or a JAX array outside tracing). A traced lambd (an
    argument of the jitted or differentiated function) cannot raise: where it is negative
    the loss is NaN, so `jax.config.update("jax_debug_nans", True)` or
    `checkify.checkify(..., errors=checkify.nan_checks)` stops there. Values inside the
    embeddings (NaN, inf) are not checked: they propagate, as in any JAX function.

    Scale: each feature is standardised as (z - mean) / sqrt(var + eps), so the loss does
    not depend on the embeddings' scale as long as every feature's batch variance is well
    above eps (std >> sqrt(eps) = 3.2e-3 at the default eps = 1e-5). Features with a
    smaller spread are shrunk towards 0 (at std = sqrt(eps), C_ii reaches only 1/2 for
    identical views) and a feature that is constant over the batch contributes
    (1 - 0)^2 = 1 to the invariance term, with finite gradients. At the other end,
    float32 squares overflow for |z| above about 1e19. The value and the gradients are
    finite for constant features and pass `jax.experimental.checkify` with all checks
    (division, NaN, index): the only square root, of the monitoring-only off-diagonal
    RMS, carries no gradient.
    """
    lambd = check_weight(lambd, "lambd", "the weight of the off-diagonal term; the paper's is "
                         "0.0051, 0 keeps only the invariance term")
    terms = barlow_twins_terms(z_a, z_b, redundancy=redundancy, axis_name=axis_name, eps=eps,
                               path=path)
    loss = weighted_sum(terms, {"on_diag": 1.0, "off_diag": lambd})
    if isinstance(lambd, jax.core.Tracer):   # cannot raise under tracing: NaN instead, made
        # by an operation (checkify's nan_checks and jax_debug_nans flag it) that adds 0 and
        # no gradient where lambd >= 0
        loss = loss + jnp.sqrt(jax.lax.stop_gradient(jnp.minimum(lambd, 0.0)))
    return loss


def objective(z_a: Array, z_b: Array, loss_cfg, axis_name: AxisName = None
              ) -> tuple[Array, dict[str, Array]]:
    """The trainer's Barlow Twins loss: loss.scale x (loss.invariance_weight x on_diag +
    loss.lambd x off_diag), with loss.redundancy, loss.normalization and
    loss.correlation_path; the scalars are `barlow_twins_terms`'."""
    terms = barlow_twins_terms(z_a, z_b, redundancy=loss_cfg.redundancy,
                               normalization=loss_cfg.normalization,
                               path=loss_cfg.correlation_path, axis_name=axis_name)
    loss = loss_cfg.scale * weighted_sum(terms, {"on_diag": loss_cfg.invariance_weight,
                                                 "off_diag": loss_cfg.lambd})
    return loss, terms


# Its settings, at loss.* (the public contract names loss.lambd and loss.redundancy).
DEFAULTS = {
    # FAIR's 0.0051 (the paper writes 5e-3) is for an 8192-wide projector at batch 2048:
    # lambd (D - 1) / N = 0.020 (the off-diagonal term's sampling noise against the
    # diagonal's D). Keep that ratio when D grows or N shrinks: at D 4096, N 256, 0.0051
    # costs 7.6 points on Fashion-MNIST, 0.00127 still 0.6, just beyond seed noise over 3
    # seeds (docs/ablations.md, projector width).
    "lambd": 0.0051,
    "redundancy": "cross",       # "auto": off-diagonal term from view A's auto-correlation
    # Ablations (paper Table 5): invariance_weight 0 = redundancy term only, lambd 0 =
    # invariance only; normalization "feature" / "none".
    "invariance_weight": 1.0,
    "normalization": "batch",    # "batch" | "feature" | "none"
    # How sum C_ij^2 is computed: "direct" forms the [D, D] matrix, "gram" goes through the
    # [N, N] Gram matrices of the views (O(N^2 D)); "auto" takes "gram" when 2N <= D for
    # the global batch N (where it costs no more FLOPs, nor floats sent between devices).
    # Same values and gradients up to float32 rounding.
    "correlation_path": "auto",
}


def check_settings(loss_cfg) -> None:
    """ConfigError naming the field and the fix for a Barlow Twins setting that cannot work."""
    if not loss_cfg.lambd >= 0:
        raise ConfigError(f"loss.lambd must be >= 0 (0: the invariance term only); got "
                          f"{loss_cfg.lambd}.")
    if not loss_cfg.invariance_weight >= 0:
        raise ConfigError(f"loss.invariance_weight must be >= 0; got "
                          f"{loss_cfg.invariance_weight}.")
    for field, allowed in (("redundancy", REDUNDANCY_MODES), ("normalization", NORMALIZATIONS),
                           ("correlation_path", CORRELATION_PATHS)):
        if loss_cfg[field] not in allowed:
            raise ConfigError(f"loss.{field} must be one of {allowed}; got "
                              f"{loss_cfg[field]!r}.")


OBJECTIVE = Objective(
    "barlow_twins", objective,
    progress=(("on_diag", "on-diag", ".3f"), ("off_diag", "off-diag", ".2f")),
    curves=(("on_diag", "invariance term  sum (1 - C_ii)^2"),
            ("off_diag", "redundancy term  sum_{i!=j} C_ij^2")),
    defaults=DEFAULTS, check=check_settings)
