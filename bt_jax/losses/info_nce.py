"""InfoNCE over the batch (van den Oord et al. 2018; SimCLR's NT-Xent) on the same
embeddings: a stand-in for the Barlow Twins paper's Table 5 row "cross-entropy with
temperature", which is taken over the entries of the cross-correlation matrix instead (its
Sec. 4), with a temperature and weight the paper does not give."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bt_jax.errors import ConfigError
from bt_jax.losses.common import Array, AxisName, Objective, check_pair, global_count, global_sum


def info_nce_loss(z_a: Array, z_b: Array, *, temperature: float = 0.1,
                  axis_name: AxisName = None) -> Array:
    """Symmetric cross-entropy with temperature over the batch (InfoNCE / NT-Xent-style):
    the stand-in for the paper's Table 5 "cross-entropy with temperature" row.

    Embeddings are L2-normalised; row i of view A must pick row i of view B among all N
    rows of view B (and vice versa), with logits cos / temperature. With axis_name, the
    other devices' rows are all-gathered (differentiably), so value and gradients equal
    those of the global batch on one device.

    Args:
      z_a, z_b: [N_local, D] embeddings of the two views.

    Returns:
      float32 scalar: (CE(A -> B) + CE(B -> A)) / 2, averaged over the global batch.
    """
    z_a, z_b = check_pair(z_a, z_b)

    def unit(z):
        z = z.astype(jnp.float32)
        return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(z), 1, keepdims=True), 1e-24))

    a, b = unit(z_a), unit(z_b)
    n_local = a.shape[0]
    if axis_name is None:
        all_a, all_b, offset = a, b, 0
    else:
        all_a = jax.lax.all_gather(a, axis_name, tiled=True)
        all_b = jax.lax.all_gather(b, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * n_local
    targets = offset + jnp.arange(n_local)
    hi = jax.lax.Precision.HIGHEST

    def ce(q, keys):
        logits = jnp.matmul(q, keys.T, precision=hi) / temperature      # [n_local, N]
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.take_along_axis(log_p, targets[:, None], axis=1))

    total = 0.5 * (ce(a, all_b) + ce(b, all_a))
    return global_sum(total[None], axis_name) / global_count(a, axis_name)


def objective(z_a: Array, z_b: Array, loss_cfg, axis_name: AxisName = None
              ) -> tuple[Array, dict[str, Array]]:
    """loss.scale x InfoNCE at loss.info_nce.temperature; the scalar is the unscaled
    InfoNCE."""
    value = info_nce_loss(z_a, z_b, temperature=loss_cfg.info_nce.temperature,
                          axis_name=axis_name)
    return loss_cfg.scale * value, {"info_nce": value}


def check_settings(cfg) -> None:
    """loss.info_nce: its temperature must be positive."""
    if not cfg.temperature > 0:
        raise ConfigError(f"loss.info_nce.temperature must be positive; got {cfg.temperature}.")


OBJECTIVE = Objective("info_nce", objective, progress=(("info_nce", "info-nce", ".4f"),),
                      curves=(("info_nce", "cross-entropy with temperature"),),
                      settings="info_nce", defaults={"temperature": 0.1},
                      check=check_settings)
