"""What the objectives share: the Objective record, global (all-device) sums and counts
over the batch, and the shape checks of a pair of embeddings."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
AxisName = Optional[object]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A self-supervised objective as the trainer uses it.

    name: its `loss.kind`.
    fn: (z_a, z_b, loss_cfg, axis_name) -> (loss, scalars): the float32 loss of the two
      views' [N_local, D] embeddings (global over `axis_name` inside shard_map) and a dict
      of named float32 scalars for logging. loss_cfg is the config's `loss` section.
      metrics.jsonl and TensorBoard get every scalar.
    progress: (key, label, format) of the scalars on the progress line, in order.
    curves: (key, title) of the scalars that training_curves.png plots beside the loss.
    settings: where its own settings live in `loss`: "" merges them into it (Barlow
      Twins', whose loss.lambd the public contract names), else loss.<settings>.
    defaults: {field: default} of its own settings.
    check: (the section of its settings) -> None; raises ConfigError naming the fix.
    """
    name: str
    fn: Callable[[Array, Array, Any, AxisName], tuple[Array, dict]]
    progress: tuple[tuple[str, str, str], ...] = ()
    curves: tuple[tuple[str, str], ...] = ()
    settings: str = ""
    defaults: dict = dataclasses.field(default_factory=dict)
    check: Callable[[Any], None] = lambda cfg: None


def global_sum(x: Array, axis_name: AxisName) -> Array:
    """Sum of `x` over the leading (batch) axis and, if named, over the device axis."""
    s = jnp.sum(x, axis=0)
    return jax.lax.psum(s, axis_name) if axis_name is not None else s


def global_count(z: Array, axis_name: AxisName) -> Array:
    """Number of rows of `z` summed over the device axis: the global batch size N."""
    n = jnp.asarray(z.shape[0], jnp.float32)
    return jax.lax.psum(n, axis_name) if axis_name is not None else n


def check_embeddings(z, name: str) -> Array:
    """z as an array (lists and NumPy arrays are converted), checked to be real [N, D];
    ValueError / TypeError otherwise."""
    if isinstance(z, (str, bytes, dict)) or z is None:
        raise TypeError(f"{name} must be an [N, D] array of embeddings; got "
                        f"{type(z).__name__}.")
    z = jnp.asarray(z)
    if not (jnp.issubdtype(z.dtype, jnp.floating) or jnp.issubdtype(z.dtype, jnp.integer)):
        raise TypeError(
            f"{name} must hold real numbers; got dtype {z.dtype}"
            + (" (its imaginary part would be dropped: pass jnp.real(z) or stack the real "
               "and imaginary parts as features)" if jnp.issubdtype(z.dtype, jnp.complexfloating)
               else "") + ".")
    if z.ndim != 2:
        raise ValueError(
            f"{name} must have shape [N, D] (batch, features); got shape {tuple(z.shape)}. "
            "Flatten or pool the embedding to two dimensions before the loss.")
    return z


def global_rows(z: Array, axis_name: AxisName) -> int:
    """The global batch size N as a Python int (static: local rows times devices)."""
    return z.shape[0] * (jax.lax.psum(1, axis_name) if axis_name is not None else 1)


def check_pair(z_a, z_b) -> tuple[Array, Array]:
    """(z_a, z_b) as arrays, each checked by `check_embeddings`, of the same shape."""
    z_a = check_embeddings(z_a, "z_a")
    z_b = check_embeddings(z_b, "z_b")
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must have the same shape [N, D]; got {tuple(z_a.shape)} and "
            f"{tuple(z_b.shape)}. Both views of a batch must pass through the same network.")
    return z_a, z_b


def check_weight(weight, name: str, meaning: str):
    """A loss term's weight, checked where it can be: a Python or NumPy number, or a
    concrete JAX scalar, must be real and >= 0 (ValueError / TypeError naming `name` and
    its `meaning`); a traced one (an argument of a jitted or differentiated function) is
    returned as it is: the objective then makes its value NaN where it is negative."""
    if isinstance(weight, jax.core.Tracer):
        if jnp.ndim(weight) != 0 or not jnp.issubdtype(weight.dtype, jnp.floating):
            raise TypeError(f"{name} must be a real scalar; got a traced {weight.dtype} of "
                            f"shape {jnp.shape(weight)}.")
        return weight
    if isinstance(weight, (bool, str, bytes)) or not (
            isinstance(weight, numbers.Real) or (hasattr(weight, "dtype")
                                                 and jnp.ndim(weight) == 0
                                                 and jnp.isrealobj(weight))):
        raise TypeError(f"{name} must be a real number ({meaning}); got "
                        f"{type(weight).__name__} {weight!r}.")
    if not float(weight) >= 0:
        raise ValueError(f"{name}, {meaning}, must be >= 0; got {weight}.")
    return weight


def weighted_sum(terms: dict[str, Array], weights: dict[str, float]) -> Array:
    """sum over k of weights[k] * terms[k]: an objective's loss from its named terms."""
    return sum(w * terms[k] for k, w in weights.items())
