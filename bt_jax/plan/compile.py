"""Compile the trainer's own programs for a set of devices, from shapes alone, and read
what the compiler says of them: memory per device, FLOPs, bytes, collectives.

The programs come from `train.setup.assemble`, the function the trainer itself calls,
on the trainer's mesh (`parallel.make_mesh`) and shardings: the state replicated,
the batch split over "batch". Nothing is materialised: the state is `jax.eval_shape` of
its initialiser, the batch `jax.ShapeDtypeStruct`s in the pipeline's layout.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from bt_jax import parallel
from bt_jax.plan import hlo, hlo_cost
from bt_jax.train import programs as programs_lib
from bt_jax.train import setup
from bt_jax.train.setup import RunShape, conv_impl_for, run_shape  # noqa: F401  (re-exported)
from bt_jax.train.step import update_inputs


def memory_stats(compiled) -> dict:
    """Per-device bytes of a compiled program: arguments, outputs, aliased (donated inputs
    reused as outputs), temporaries, generated code, and the total that must fit:
    arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
           "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
           "generated_code_bytes": m.generated_code_size_in_bytes}
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                          + out["temp_bytes"])
    return out


XLA_COST = "XLA's cost analysis"
HLO_COUNT = "counted over the compiled HLO (bt_jax.plan.hlo_cost)"


def cost_stats(compiled, hlo_text: str) -> dict:
    """FLOPs and bytes accessed per device for one run of the program: XLA's cost
    analysis where the compiler gives one (its "optimal_seconds" is left out: XLA:TPU
    reports it negative), else (XLA:GPU for compile-only devices) `hlo_cost.count` of the
    compiled HLO. "matmul_flops" (dots and convolutions) is always counted, "cost_source"
    says which gave "flops" and "bytes_accessed"."""
    counted = hlo_cost.count(hlo_text)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost:
        return {**counted, "cost_source": HLO_COUNT}
    return {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "matmul_flops": counted["matmul_flops"], "cost_source": XLA_COST}


class OutOfMemory(Exception):
    """The compiler refused a program that does not fit: needed / available bytes per
    device, where its message gives them (else None)."""

    def __init__(self, program: str, needed: Optional[float], available: Optional[float],
                 message: str):
        super().__init__(message)
        self.program, self.needed, self.available = program, needed, available


_SIZE = r"([0-9.]+)\s*([KMGT]i?B?|B)"
_UNITS = {"B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _bytes(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit[0].upper()] if unit[0].upper() in _UNITS else float(value)


def parse_out_of_memory(message: str) -> tuple[Optional[float], Optional[float]]:
    """(needed, available) bytes from XLA's out-of-memory message: libtpu 0.0.42's "the
    total memory required for HLO temporaries (88.00G) exceeds available HBM (15.75G)",
    or "Used 18.20G of 15.75G hbm"; (None, None) where it gives no sizes."""
    for pattern in (r"\(" + _SIZE + r"\)\s+exceeds available HBM\s+\(" + _SIZE + r"\)",
                    r"[Uu]sed\s+" + _SIZE + r"\s+of\s+" + _SIZE):
        m = re.search(pattern, message)
        if m:
            return _bytes(m.group(1), m.group(2)), _bytes(m.group(3), m.group(4))
    return None, None


def compile_program(name: str, fn: Callable, *args, num_devices: int,
                    progress=print, node_of: Optional[Sequence[int]] = None
                    ) -> tuple[object, dict]:
    """fn.lower(*args).compile(), timed, with a progress line before and after. Returns
    (compiled, {"name", "compile_seconds", memory_stats, cost_stats, "collectives",
    "collective_summary"}); node_of: the node of each device id (GPU nodes), for the
    collectives' bytes within and between nodes."""
    progress(f"  compiling {name} ...")
    start = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError / JaxRuntimeError
        text = str(e)
        if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
            needed, available = parse_out_of_memory(text)
            raise OutOfMemory(name, needed, available, text.splitlines()[0][:300]) from None
        raise
    seconds = time.perf_counter() - start
    text = compiled.as_text()
    items = hlo.collectives(text, num_devices)
    stats = {"name": name, "compile_seconds": seconds, **memory_stats(compiled),
             **cost_stats(compiled, text), "collectives": [c.as_dict() for c in items],
             "collective_summary": hlo.summarize(items, node_of)}
    progress(f"  compiled {name} in {seconds:.1f} s: {stats['total_bytes'] / 2 ** 30:.2f} GiB "
             f"per device, {stats['flops'] / 1e12:.3f} TFLOP, {len(items)} collectives")
    return compiled, stats


def _with_sharding(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)


@dataclasses.dataclass
class CompiledRun:
    """The compiled programs of one configuration on one set of devices."""
    programs: list          # [stats dict] in the order they run: views (if any), update
    executables: list       # the compiled programs, same order
    args: list              # their abstract arguments, same order
    state_bytes: int        # per device: the replicated TrainState
    parameter_bytes: int    # per device: the parameters (model and online probe)
    per_device_batch: int
    num_devices: int


def compile_run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
                shape: RunShape, progress=print) -> CompiledRun:
    """Compiles the train step (and the on-device augmentation ahead of it, where
    data.augment_on="device") of `config` for `devices`, as the trainer builds them.

    Raises:
      ConfigError: an invalid config, or a batch the devices do not divide.
      OutOfMemory: the compiler found that a program does not fit a device.
    """
    run = setup.assemble(config, devices, shape=shape, state="abstract")
    mesh, built, state = run.mesh, run.programs, run.state
    per_device = config.batch_size // mesh.size
    batch = programs_lib.abstract_batch(run.layout, config.batch_size, config.data.image_size,
                                        shape.channels, mesh)
    stats, executables, arguments = [], [], []
    node_of = nodes_of(mesh)
    if built.make_views is not None:
        views = built.views_step
        compiled, s = compile_program("views (on-device augmentation)", views, batch,
                                      num_devices=mesh.size, progress=progress,
                                      node_of=node_of)
        stats.append(s)
        executables.append(compiled)
        arguments.append((batch,))
        made = _with_sharding(jax.eval_shape(views, batch), parallel.batch_sharded(mesh))
        batch = update_inputs(made, batch)
        update = built.update_step
    else:
        update = built.train_step
    compiled, s = compile_program("train step", update, state, batch, num_devices=mesh.size,
                                  progress=progress, node_of=node_of)
    stats.append(s)
    executables.append(compiled)
    arguments.append((state, batch))
    params = [state.params] + ([state.probe["params"]] if state.probe is not None else [])
    return CompiledRun(programs=stats, executables=executables, args=arguments,
                       state_bytes=tree_bytes(state), parameter_bytes=tree_bytes(params),
                       per_device_batch=per_device, num_devices=mesh.size)


def nodes_of(mesh) -> Optional[list[int]]:
    """The node (process) of each device of a GPU mesh, in the mesh's order, which is the
    order of the device ids in the compiled collectives; None off GPUs (a TPU slice is one
    interconnect domain across its hosts)."""
    devices = list(mesh.devices.flat)
    if devices[0].platform != "gpu":
        return None
    return [d.process_index for d in devices]


def tree_bytes(tree) -> int:
    """Bytes of every array (or ShapeDtypeStruct) of a pytree."""
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def peak_bytes(run: CompiledRun) -> int:
    """Per-device memory the run needs: the largest program's total, where the state stays
    resident beside the augmentation program (its argument is the batch alone)."""
    totals = [p["total_bytes"] + (run.state_bytes if p["name"].startswith("views") else 0)
              for p in run.programs]
    return max(totals)
