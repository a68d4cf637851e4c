"""make_plan: one config on one topology -> the plan dict; find_max_batch: the largest
per-chip batch that fits, by a bracketing search over compiles; measure_step: the step
time measured on this machine's own devices (--topology local)."""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bt_jax.errors import ConfigError
from bt_jax.plan import gpus, report
from bt_jax.plan.chips import devices_for, hbm_of, libtpu_build, memory_limit
from bt_jax.plan.compile import CompiledRun, OutOfMemory, RunShape, compile_run, peak_bytes
from bt_jax.train.step import update_inputs


class DoesNotFit(ConfigError):
    """The plan needs more memory per chip than the chip has."""


def lowering_advice(run: dict) -> str:
    """Which settings would lower the memory per chip of a plan's run (`plan["run"]`), for
    the error of a plan that does not fit."""
    n = max(run["num_devices"], 1)
    per = run["global_batch"] // n
    tips = [f"a smaller per-chip batch (--config.batch_size={max(per // 2, 1) * n} "
            "here, or the same global batch on more chips)"]
    if run["dtype"] != "bfloat16":
        tips.append("--config.model.dtype=bfloat16")
    if max(run["projector_dims"]) > 2048:
        tips.append("a narrower projector (model.projector_dims)")
    if run["augment_on"] == "device":
        tips.append("--config.data.augment_on=host")
    if run.get("platform") == "gpu":
        tips.append("more of the GPU's memory for XLA (XLA_PYTHON_CLIENT_MEM_FRACTION=0.9; "
                    "JAX gives it 0.75 by default), or a GPU with more (--topology h200:..., "
                    "b200:...)")
    else:
        tips.append("a chip with more HBM (--topology v5p:..., v4:...)")
    return "; ".join(tips)


def compiler_name(platform: str) -> str:
    """'XLA:TPU (jax 0.10.2, libtpu 0.0.42.1)', 'XLA:GPU (jax 0.10.2, cuDNN 9.8.0)',
    'XLA:CPU (jax 0.10.2)'."""
    extra = ""
    if platform == "tpu":
        extra = f", {libtpu_build()}"
    elif platform == "gpu":
        extra = ", cuDNN " + ".".join(map(str, gpus.cudnn_version()))
    return f"XLA:{platform.upper()} (jax {jax.__version__}{extra})"


def make_plan(config: ml_collections.ConfigDict, topology: str, shape: RunShape, *,
              command: str = "", config_name: str = "", progress=print,
              devices_and_chip: Optional[tuple] = None) -> tuple[dict, CompiledRun]:
    """Compiles the run for the topology and returns (plan dict, the compiled run).

    The plan: chips, chip kind, batches; memory per chip of each program and whether the
    run fits; FLOPs and bytes per chip per step; every collective; compile seconds; the
    roofline estimate (`report.step_estimate`). A program the compiler refuses for
    memory gives a plan with "fits": False and the compiler's sizes.
    """
    devices, chip = devices_and_chip or devices_for(topology)
    hbm, limit = memory_limit(chip, devices)
    run, oom = None, None
    try:
        run = compile_run(config, devices, shape, progress=progress)
    except OutOfMemory as e:
        oom = e
    n = len(devices)
    plan = {"topology": topology, "command": command, "device_kind": devices[0].device_kind,
            "compiler": compiler_name(devices[0].platform),
            "chip": {"name": chip.name, "bf16_flops": chip.bf16_flops,
                     "hbm_bytes": chip.hbm_bytes, "hbm_bandwidth": chip.hbm_bandwidth,
                     "ici_bandwidth": chip.ici_bandwidth,
                     "network_bandwidth": chip.network_bandwidth,
                     "devices_per_node": chip.devices_per_node, "source": chip.source},
            "run": {"config": config_name, "platform": devices[0].platform,
                    "num_devices": n, "global_batch": config.batch_size,
                    "per_device_batch": config.batch_size // n, "backbone": config.model.backbone,
                    "projector_dims": list(config.model.projector_dims),
                    "dtype": config.model.dtype, "image_size": config.data.image_size,
                    "augment_on": config.data.augment_on, "loss": config.loss.kind,
                    "correlation_path": config.loss.correlation_path,
                    "epoch_examples": shape.examples}}
    if oom is not None:
        plan.update(programs=[], compile_seconds=0.0, memory={
            "needed_bytes": oom.needed, "hbm_bytes": oom.available or hbm, "fits": False,
            "limit": "the compiler's figure" if oom.available else limit,
            "refused_by_compiler": str(oom)}, estimate=None)
        return plan, None
    needed = peak_bytes(run)
    if devices[0].platform == "gpu":
        plan["memory_fraction"] = hbm / chip.hbm_bytes if hbm and chip.hbm_bytes else None
    plan.update(programs=run.programs,
                compile_seconds=sum(p["compile_seconds"] for p in run.programs),
                state_bytes=run.state_bytes, parameter_bytes=run.parameter_bytes,
                backward_all_reduce_bytes=sum(p["collective_summary"]
                                              ["backward_all_reduce_bytes"]
                                              for p in run.programs),
                memory={"needed_bytes": needed, "hbm_bytes": hbm, "limit": limit,
                        "fits": hbm is None or needed <= hbm},
                estimate=report.step_estimate(run.programs, chip, run.per_device_batch, n,
                                              shape.examples))
    return plan, run


def check_fits(plan: dict) -> None:
    """Raises DoesNotFit (one line: needed, available, what would lower it)."""
    m = plan["memory"]
    if m["fits"]:
        return
    needed = "more than it has" if m["needed_bytes"] is None else \
        f"{m['needed_bytes'] / 2 ** 30:.2f} GiB"
    have = ("an amount the compiler did not say" if m["hbm_bytes"] is None
            else f"{m['hbm_bytes'] / 2 ** 30:.2f} GiB")
    raise DoesNotFit(
        f"The plan does not fit: it needs {needed} per chip and a {plan['chip']['name']} has "
        f"{have}. Lower it with {lowering_advice(plan['run'])}.")


def find_max_batch(config: ml_collections.ConfigDict, topology: str, shape: RunShape, *,
                   step: int = 8, start: Optional[int] = None, progress=print,
                   max_tries: int = 12, known: Optional[dict] = None,
                   earlier_tries: Sequence[dict] = (),
                   devices_and_chip: Optional[tuple] = None) -> dict:
    """The largest per-chip batch (a multiple of `step`) whose plan fits the chip.

    A bracketing search over compiles: it grows the batch (x2) from `start` (default the
    config's per-chip batch) until a compile does not fit, then narrows the bracket
    [fits, does not fit], trying next the batch where a straight line through the two
    ends' memory meets the HBM, until the two ends are `step` apart. XLA's memory is not
    linear in the batch near the limit (it rematerialises to fit: 28.95 GiB at 1,024 per
    v4 chip, 28.72 at 1,056, 95.5 at 2,048), and there the line creeps up one step a try
    (regula falsi's stall): once it has moved only the lower end twice in a row, the
    search bisects to the end. Each try prints one line.

    known: a plan already made of this config (its per-chip batch is not compiled again).
    earlier_tries: the "tries" of an interrupted search of this config and topology: the
      search replays them without compiling and goes on from where they stopped.
    devices_and_chip: (devices, Chip) to compile for; default `devices_for(topology)`.
    max_tries: at most this many compiles in this call; a search stopped by it returns
      complete False and its open bracket, for a later call's earlier_tries.

    Returns {"max_per_chip_batch", "complete": whether the bracket closed (the next step
    up was compiled and does not fit), "bracket": [largest that fits, smallest that does
    not (None: not reached)], "tries": [{"per_chip_batch", "needed_bytes", "fits",
    "compile_seconds"}], "hbm_bytes", "step"}.
    """
    devices, chip = devices_and_chip or devices_for(topology)
    n = len(devices)
    hbm = hbm_of(chip, devices)
    if hbm is None:
        raise ConfigError(f"--max-batch needs a memory limit; {topology!r} has none.")
    tries, memo = [], {}
    if known is not None:
        m = known["memory"]
        memo[known["run"]["per_device_batch"]] = {
            "per_chip_batch": known["run"]["per_device_batch"], "needed_bytes": m["needed_bytes"],
            "fits": m["fits"], "compile_seconds": known["compile_seconds"]}
        tries.append(memo[known["run"]["per_device_batch"]])
    for row in earlier_tries:
        if row["per_chip_batch"] not in memo:
            memo[row["per_chip_batch"]] = dict(row)
            tries.append(memo[row["per_chip_batch"]])

    compiles = 0

    def attempt(per_chip: int) -> bool:
        nonlocal compiles
        if per_chip in memo:
            return memo[per_chip]["fits"]
        compiles += 1
        t = time.perf_counter()
        tried = copy.deepcopy(config)
        tried.batch_size = per_chip * n
        plan, _ = make_plan(tried, topology, shape, progress=lambda *_: None,
                            devices_and_chip=(devices, chip))
        m = plan["memory"]
        row = {"per_chip_batch": per_chip, "needed_bytes": m["needed_bytes"],
               "fits": m["fits"], "compile_seconds": time.perf_counter() - t}
        memo[per_chip] = row
        tries.append(row)
        need = "refused by the compiler" if m["needed_bytes"] is None else \
            f"{m['needed_bytes'] / 2 ** 30:.2f} GiB"
        progress(f"  try {len(tries)}: batch {per_chip} per chip ({per_chip * n} global): "
                 f"{need} of {hbm / 2 ** 30:.2f} GiB -> "
                 f"{'fits' if m['fits'] else 'does not fit'} ({row['compile_seconds']:.0f} s)")
        return m["fits"]

    def result(lo: int, hi: Optional[int]) -> dict:
        closed = hi is not None and hi in memo and not memo[hi]["fits"] and hi - lo <= step
        return {"max_per_chip_batch": lo, "complete": closed,
                "bracket": [lo, hi if hi in memo else None], "tries": tries,
                "hbm_bytes": hbm, "step": step}

    lo = max(step, (start or config.batch_size // n) // step * step)
    while not attempt(lo):          # shrink until something fits
        if lo == step:
            return result(0, step)
        if compiles >= max_tries:
            return result(0, lo)
        lo = max(step, lo // 2 // step * step)
    hi = lo * 2
    while compiles < max_tries and attempt(hi):
        lo, hi = hi, hi * 2
    last_end, same_end, stalled = None, 0, False
    while hi in memo and hi - lo > step and compiles < max_tries:
        mid = _next_try(lo, hi, memo, hbm, step, bisect=stalled)
        if attempt(mid):
            lo, end = mid, "lo"
        else:
            hi, end = mid, "hi"
        same_end = same_end + 1 if end == last_end else 1
        last_end = end
        stalled = stalled or same_end >= 2
    return result(lo, hi)


def _next_try(lo: int, hi: int, memo: dict, hbm: float, step: int,
              bisect: bool = False) -> int:
    """The next batch strictly inside (lo, hi), a multiple of step: where the line through
    the memory of lo and hi reaches hbm, else (or where `bisect`) the midpoint."""
    a, b = memo[lo]["needed_bytes"], memo[hi]["needed_bytes"]
    mid = (lo + hi) // 2
    if not bisect and a is not None and b is not None and b > a:
        mid = lo + (hbm - a) / (b - a) * (hi - lo)
    mid = int(math.floor(mid / step)) * step
    return min(max(mid, lo + step), hi - step)


def _materialise(tree, key):
    """Concrete arrays of an abstract tree on its shardings: small normal floats, random
    uint8 images, zero integers (step 0, labels and indices)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))

    def make(x, k):
        if jnp.issubdtype(x.dtype, jnp.floating):
            value = 0.05 * jax.random.normal(k, x.shape, jnp.float32)
        elif x.dtype == jnp.uint8:
            value = jax.random.randint(k, x.shape, 0, 256, jnp.int32)
        else:
            value = jnp.zeros(x.shape, jnp.int32)
        return jax.device_put(value.astype(x.dtype), x.sharding)

    return jax.tree.unflatten(treedef, [make(x, k) for x, k in zip(leaves, keys)])


def measure_step(run: CompiledRun, steps: int = 5, clock: Callable = time.perf_counter) -> dict:
    """Runs the compiled programs on this machine's devices and times them: the median of
    `steps` steps (views then update) after one warm-up. {"step_seconds", "steps",
    "times"}."""
    args = [_materialise(a, jax.random.key(i)) for i, a in enumerate(run.args)]
    state = args[-1][0]
    times = []
    for i in range(steps + 1):
        t = clock()
        if len(run.executables) == 2:
            batch = update_inputs(run.executables[0](*args[0]), args[0][0])
        else:
            batch = args[-1][1]
        state, metrics = run.executables[-1](state, batch)
        jax.block_until_ready(metrics)
        if i:
            times.append(clock() - t)
    return {"step_seconds": float(np.median(times)), "steps": steps, "times": times}
