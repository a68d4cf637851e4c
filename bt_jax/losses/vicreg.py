"""VICReg: Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning", ICLR 2022 (arXiv 2105.04906), Eq. (1)-(6), in the form of
the authors' released code, for which its weights (25, 25, 1) were chosen:

  loss = w_inv * s(Z_A, Z_B) + w_var * (v(Z_A) + v(Z_B)) / 2 + w_cov * (c(Z_A) + c(Z_B))

  s(Z_A, Z_B) = mean over the N x D entries of (Z_A - Z_B)^2          (invariance)
  v(Z) = (1/D) sum_j max(0, 1 - sqrt(Var(z_j) + eps))                  (variance)
  c(Z) = (1/D) sum_{i != j} Cov(Z)_ij^2                                (covariance)

with the unbiased (N - 1) variance and covariance over the batch, eps = 1e-4. The paper's
Eq. (6) sums v over the two views; the code averages them, a factor of 2 on w_var.
Inside shard_map (axis_name set) every mean, variance and covariance is over the global
batch, so the value and the gradients equal those of the global batch on one device (the
released code all-gathers the embeddings for v and c, and its per-GPU MSE averages to the
global one).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bt_jax.errors import ConfigError
from bt_jax.losses.common import (Array, AxisName, Objective, check_pair, global_count,
                                  global_rows, global_sum, weighted_sum)


def _variance_and_covariance(z: Array, axis_name: AxisName, eps: float
                             ) -> tuple[Array, Array]:
    """(v(Z), c(Z)) of one view's [N_local, D] embeddings over the global batch."""
    z = z.astype(jnp.float32)
    n = global_count(z, axis_name)
    centred = z - global_sum(z, axis_name) / n
    cov = jnp.einsum("nd,ne->de", centred, centred, precision=jax.lax.Precision.HIGHEST)
    if axis_name is not None:
        cov = jax.lax.psum(cov, axis_name)
    cov = cov / (n - 1.0)                                                  # [D, D]
    d = z.shape[1]
    variance = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(jnp.diagonal(cov) + eps)))
    covariance = (jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(jnp.diagonal(cov)))) / d
    return variance, covariance


def vicreg_terms(z_a: Array, z_b: Array, *, axis_name: AxisName = None,
                 eps: float = 1e-4) -> dict[str, Array]:
    """The three terms, unweighted (see the module docstring).

    Args:
      z_a, z_b: [N_local, D] embeddings of the two views (any float dtype; float32 math).
      axis_name: the mesh axis over which the batch is split, inside shard_map, or None.
      eps: added to each variance under the square root.

    Returns:
      float32 scalars "invariance" (s), "variance" ((v(Z_A) + v(Z_B)) / 2) and
      "covariance" (c(Z_A) + c(Z_B)).

    Raises:
      ValueError: shapes that are not two equal [N, D], or a global N < 2.
    """
    z_a, z_b = check_pair(z_a, z_b)
    if global_rows(z_a, axis_name) < 2:
        raise ValueError(f"VICReg needs a global batch of at least 2 embeddings for its "
                         f"variance and covariance; got {global_rows(z_a, axis_name)}.")
    a, b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
    n, d = global_count(a, axis_name), a.shape[1]
    invariance = jnp.sum(global_sum(jnp.square(a - b), axis_name)) / (n * d)
    var_a, cov_a = _variance_and_covariance(a, axis_name, eps)
    var_b, cov_b = _variance_and_covariance(b, axis_name, eps)
    return {"invariance": invariance, "variance": (var_a + var_b) / 2,
            "covariance": cov_a + cov_b}


def vicreg_loss(z_a: Array, z_b: Array, *, invariance_weight: float = 25.0,
                variance_weight: float = 25.0, covariance_weight: float = 1.0,
                axis_name: AxisName = None, eps: float = 1e-4) -> Array:
    """The VICReg loss with the paper's weights by default: float32 scalar."""
    return weighted_sum(vicreg_terms(z_a, z_b, axis_name=axis_name, eps=eps),
                        {"invariance": invariance_weight, "variance": variance_weight,
                         "covariance": covariance_weight})


def objective(z_a: Array, z_b: Array, loss_cfg, axis_name: AxisName = None
              ) -> tuple[Array, dict[str, Array]]:
    """loss.scale x VICReg with the weights of loss.vicreg; the scalars are the terms."""
    terms = vicreg_terms(z_a, z_b, axis_name=axis_name)
    w = loss_cfg.vicreg
    loss = loss_cfg.scale * weighted_sum(terms, {"invariance": w.invariance_weight,
                                                 "variance": w.variance_weight,
                                                 "covariance": w.covariance_weight})
    return loss, terms


def check_settings(cfg) -> None:
    """loss.vicreg: the three weights must be >= 0."""
    if not all(w >= 0 for w in cfg.values()):
        raise ConfigError(f"loss.vicreg's weights must be >= 0; got {dict(cfg)}.")


OBJECTIVE = Objective(
    "vicreg", objective,
    progress=(("invariance", "inv", ".4f"), ("variance", "var", ".4f"),
              ("covariance", "cov", ".4f")),
    curves=(("invariance", "invariance  mean (z_a - z_b)^2"),
            ("variance", "variance  mean max(0, 1 - std)"),
            ("covariance", "covariance  sum_{i!=j} Cov_ij^2 / D")),
    settings="vicreg",   # the weights of its three terms (Bardes et al. 2022: 25, 25, 1)
    defaults={"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0},
    check=check_settings)
