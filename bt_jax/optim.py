"""LARS with the Barlow Twins parameter groups, and the learning-rate schedules.

LARS: You et al., "Large Batch Training of Convolutional Networks" (2017). The variant is
the one of the Barlow Twins paper and its official code: weight decay is added to the
gradient before the trust ratio, and parameters with ndim <= 1 (biases, BatchNorm scale
and bias) use their own learning rate with neither weight decay nor the trust ratio.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, optax.Schedule]


class LarsState(NamedTuple):
    """count: steps taken (int32 scalar); momentum: a pytree like the params."""
    count: jax.Array
    momentum: optax.Updates


def _as_schedule(lr: ScalarOrSchedule) -> optax.Schedule:
    return lr if callable(lr) else (lambda count: jnp.asarray(lr, jnp.float32))


def is_weight(p: jax.Array) -> bool:
    """True for leaves that get weight decay and the trust ratio (ndim > 1)."""
    return jnp.ndim(p) > 1


def _trust_ratio(p: jax.Array, d: jax.Array, eta: float) -> jax.Array:
    """eta * |p| / |d|, or 1 where either norm is 0: scalar."""
    p_norm = jnp.linalg.norm(p)
    d_norm = jnp.linalg.norm(d)
    ok = (p_norm > 0) & (d_norm > 0)
    return jnp.where(ok, eta * p_norm / jnp.where(ok, d_norm, 1.0), 1.0)


Mask = Union[None, Any, Callable[[Any], Any]]


def _resolve_mask(mask: Mask, params: Any, name: str) -> Any:
    """A pytree of bools shaped like params: `mask`, `mask(params)`, or is_weight's rule."""
    if mask is None:
        return jax.tree.map(is_weight, params)
    tree = mask(params) if callable(mask) else mask
    if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(
            f"lars: {name} must be a pytree of bools with the params' structure (or a function "
            f"of the params returning one); its structure {jax.tree.structure(tree)} differs "
            f"from the params' {jax.tree.structure(params)}.")
    return jax.tree.map(bool, tree)


def lars(weight_lr: ScalarOrSchedule, bias_lr: ScalarOrSchedule, *,
         weight_decay: float = 1.5e-6, momentum: float = 0.9,
         eta: float = 0.001, clip_trust_ratio: bool = False,
         weight_decay_mask: Mask = None,
         trust_ratio_mask: Mask = None) -> optax.GradientTransformation:
    """LARS as in the Barlow Twins paper.

    For leaves with ndim > 1, each step:
      d = g + weight_decay * p;  r = eta * |p| / |d| (1 where either norm is 0);
      d *= r;  mu = momentum * mu + d;  update = -weight_lr(step) * mu.
    For leaves with ndim <= 1: d = g;  mu = momentum * mu + d;  update = -bias_lr(step) * mu.
    With clip_trust_ratio (solo-learn's `clip_lr`, used by its CIFAR recipes), r is
    replaced by min(r / weight_lr(step), 1) (1 where weight_lr(step) is 0): a layer's
    effective rate weight_lr * r becomes min(eta * |p| / |d|, weight_lr).

    The masks (as optax.lars's) say which leaves are weights when ndim does not: a pytree
    of bools with the params' structure, or a function params -> such a pytree. True in
    weight_decay_mask: the leaf gets weight decay. True in trust_ratio_mask: the leaf gets
    the trust ratio and weight_lr; False: neither, and bias_lr (FAIR's code puts exactly
    the leaves without trust ratio in its lr_biases group). None: ndim > 1, the rule above.

        # A 2-D positional embedding treated like a bias:
        is_weight = lambda params: flax.traverse_util.path_aware_map(
            lambda path, p: p.ndim > 1 and "pos_embedding" not in path, params)
        tx = lars(0.2, 0.0048, weight_decay_mask=is_weight, trust_ratio_mask=is_weight)

    Args:
      weight_lr, bias_lr: float or optax schedule (a function of the step count).
      weight_decay, momentum, eta, clip_trust_ratio: as above.
      weight_decay_mask, trust_ratio_mask: as above.

    Returns:
      An optax.GradientTransformation; its `update` needs `params`.
    """
    weight_sched = _as_schedule(weight_lr)
    bias_sched = _as_schedule(bias_lr)

    def init_fn(params):
        return LarsState(count=jnp.zeros([], jnp.int32),
                         momentum=jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("lars needs the parameters: call tx.update(grads, state, params).")
        w_lr = weight_sched(state.count)
        b_lr = bias_sched(state.count)
        decay = _resolve_mask(weight_decay_mask, params, "weight_decay_mask")
        trust = _resolve_mask(trust_ratio_mask, params, "trust_ratio_mask")

        def direction(g, p, decayed, trusted):
            d = g + weight_decay * p if decayed else g
            if not trusted:
                return d
            ratio = _trust_ratio(p, d, eta)
            if clip_trust_ratio:
                ratio = jnp.where(w_lr > 0, jnp.minimum(ratio / jnp.where(w_lr > 0, w_lr, 1.0),
                                                        1.0), 1.0)
            return d * ratio

        new_mu = jax.tree.map(lambda g, p, mu, wd, tr: momentum * mu + direction(g, p, wd, tr),
                              grads, params, state.momentum, decay, trust)
        updates = jax.tree.map(lambda mu, tr: -(w_lr if tr else b_lr) * mu, new_mu, trust)
        return updates, LarsState(count=optax.safe_int32_increment(state.count),
                                  momentum=new_mu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_lr_by_batch(base_lr: float, batch_size: int) -> float:
    """The paper's linear scaling rule: base_lr * batch_size / 256."""
    return base_lr * batch_size / 256


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                           end_fraction: float = 1e-3) -> optax.Schedule:
    """Linear warm-up from 0 to peak_lr, then cosine decay to end_fraction * peak_lr.

    As in the official Barlow Twins code: lr(s) = peak * s / warmup during warm-up; after
    it, with q = (1 + cos(pi * (s - warmup) / (total - warmup))) / 2,
    lr(s) = peak * q + peak * end_fraction * (1 - q).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive; got {total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}]; "
                         f"got {warmup_steps}.")
    end_lr = peak_lr * end_fraction
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(count):
        s = jnp.asarray(count, jnp.float32)
        warm = peak_lr * s / max(warmup_steps, 1)
        t = jnp.clip((s - warmup_steps) / decay_steps, 0.0, 1.0)
        q = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        cosine = peak_lr * q + end_lr * (1.0 - q)
        return jnp.where(s < warmup_steps, warm, cosine)

    return schedule
