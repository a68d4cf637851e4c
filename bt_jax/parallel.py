"""Data parallelism: a 1-D device mesh with axis "batch", shard_map'd steps, global arrays.

A step is written per device (as with pmap): it sees its slice of the global batch,
cross-replica BatchNorm and the loss use collectives over BATCH_AXIS, and `jax.jit`
around `jax.shard_map` runs it on every device of the mesh, across hosts too.
"""
from __future__ import annotations

import collections
import functools
import itertools
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bt_jax.errors import ConfigError

BATCH_AXIS = "batch"

# XLA:CPU options for every program bt_jax compiles that runs the backbone. jaxlib 0.10's
# XLA:CPU hands convolutions to YNNPACK fusions by default; on this project's x86-64 CPU
# (AVX-512) their weight-gradient convolutions ran 1.5x to 4.7x slower than XLA's own Eigen
# convolutions. An empty list of YNNPACK fusion types sends convolutions and dots back to
# Eigen: the CIFAR ResNet-18 train step ran 1.34x and 1.45x faster in two measurements
# (experiments/PERF_NOTES.md, section 4). Only XLA:CPU reads these options.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def to_varying(tree: Any, axis_name: str) -> Any:
    """Marks replicated values as varying over `axis_name` inside shard_map (an identity
    on the values). Differentiating through it psums the cotangent once, in the values'
    own dtype: applied to float32 parameters before the model runs, every gradient is
    all-reduced once per step in float32, whatever dtype the layers compute in and
    however often a parameter is used. Left to shard_map, the psum falls where a
    replicated parameter first meets a varying activation: after its cast to bfloat16,
    once per use (XLA:TPU's train step all-reduced every weight twice, in bfloat16, once
    per view: docs/scaling.md)."""
    pcast = getattr(jax.lax, "pcast", None)
    if pcast is not None:
        return pcast(tree, axis_name, to="varying")
    return jax.lax.pvary(tree, axis_name)      # jax < 0.8


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes), axis "batch"."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def per_device_batch_size(global_batch: int, mesh: Mesh) -> int:
    """global_batch / number of devices; raises a clear error where it does not divide."""
    n = mesh.size
    if global_batch <= 0 or global_batch % n:
        lo = max(n, global_batch // n * n)
        raise ConfigError(
            f"batch_size {global_batch} is not divisible by the {n} devices of the mesh. "
            f"Set config.batch_size to a multiple of {n} (e.g. {lo} or {lo + n}).")
    return global_batch // n


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a value held whole on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a value split along its leading axis over the devices."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` whole on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def host_to_global(batch: Any, mesh: Mesh) -> Any:
    """This process's rows of a global batch -> global jax.Arrays split along axis 0.

    Args:
      batch: pytree of numpy arrays [B_local, ...], B_local = global batch / processes.
      mesh: the data-parallel mesh.

    Returns:
      the same pytree of jax.Arrays of shape [B_global, ...], sharded over "batch".
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(batches: Iterable[Any], mesh: Mesh, size: int = 2) -> Iterator[Any]:
    """Yields `host_to_global` of each host batch, keeping `size` batches already on their way
    to the devices (transfers are asynchronous), so the step never waits for a copy."""
    batches = iter(batches)
    queue = collections.deque()

    def enqueue(n: int):
        for batch in itertools.islice(batches, n):
            queue.append(host_to_global(batch, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


@functools.cache
def _xla_accepts(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's XLA:CPU compiler knows every option (older ones lack some)."""
    x = jax.device_put(np.float32(0), jax.devices("cpu")[0])     # compiled for the CPU
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(x).compile()
    except Exception:  # pylint: disable=broad-except  # "No such compile option"
        return False
    return True


def compiler_options(platform: Optional[str] = None) -> dict:
    """XLA compiler options for programs on `platform` (default: JAX's default backend).

    CPU_COMPILER_OPTIONS on "cpu" when this jaxlib knows them, else {} (accelerators, and
    jaxlibs whose XLA:CPU has no such option, compile with XLA's defaults). Pass the result
    as `jax.jit(..., compiler_options=...)`.
    """
    platform = platform or jax.default_backend()
    if platform == "cpu" and _xla_accepts(tuple(sorted(CPU_COMPILER_OPTIONS.items()))):
        return dict(CPU_COMPILER_OPTIONS)
    return {}


def data_parallel(fn: Callable, mesh: Mesh, *, num_replicated_args: int = 1,
                  donate_state: bool = False,
                  xla_options: Optional[dict] = None) -> Callable:
    """jit(shard_map(fn)): the first `num_replicated_args` args are replicated, the rest split.

    `fn` is written per device; its outputs must be the same on every device (reduce them
    with collectives over BATCH_AXIS), and are returned replicated. `xla_options`: XLA
    compiler options; None takes `compiler_options` for the mesh's platform, {} XLA's
    defaults.
    """
    def call(*args):
        specs = (P(),) * num_replicated_args + (P(BATCH_AXIS),) * (len(args) - num_replicated_args)
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P())(*args)

    call.__name__ = getattr(fn, "__name__", call.__name__)   # the program's name: jit_<fn>
    if xla_options is None:
        xla_options = compiler_options(mesh.devices.flat[0].platform)
    return jax.jit(call, donate_argnums=(0,) if donate_state else (),
                   compiler_options=xla_options)


def sharded_map(fn: Callable, mesh: Mesh, *,
                xla_options: Optional[dict] = None) -> Callable:
    """jit(shard_map(fn)) for a per-example transform of a batch: every argument and every
    output is split over BATCH_AXIS (each device maps its own slice; nothing is reduced).

    The on-device augmentation runs this way, as its own program ahead of the train step:
    XLA:CPU ran one fused program (views made inside the step) 1.14x and 1.29x slower than
    the two (experiments/PERF_NOTES.md, section 8).
    """
    def call(*args):
        return jax.shard_map(fn, mesh=mesh, in_specs=(P(BATCH_AXIS),) * len(args),
                             out_specs=P(BATCH_AXIS))(*args)

    call.__name__ = getattr(fn, "__name__", call.__name__)
    if xla_options is None:
        xla_options = compiler_options(mesh.devices.flat[0].platform)
    return jax.jit(call, compiler_options=xla_options)
