"""How experiments/benchmark.py (and gpu_check.py through it) times and sizes what it runs:
medians of blocking calls, compile time and XLA's FLOP count, a device's peak FLOP/s and
peak memory."""
from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp

# Published dense peak FLOP/s per device (no sparsity), by device_kind substring and dtype.
PUBLISHED_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},    # SXM; float32 without TF32
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "V100": {"bfloat16": 125e12, "float32": 15.7e12},  # fp16 tensor cores for half precision
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
}


def median_seconds(fn, *, steps: int, warmup: int) -> tuple[float, float]:
    """(first call's seconds, median seconds of `steps` calls after `warmup` more);
    fn() must block until its work is done."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def compile_and_count(jitted, *args):
    """(the compiled program, seconds to lower and compile it, FLOPs of one call from XLA's
    cost analysis; 0 if the backend reports none). Timing runs the compiled program, so
    nothing is compiled twice."""
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return compiled, seconds, float((analysis or {}).get("flops", 0.0))


def cpu_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of a [size, size] x [size, size] matmul on the default CPU device."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    _, sec = median_seconds(lambda: f(a).block_until_ready(), steps=repeats, warmup=1)
    return 2 * size ** 3 / sec


def device_peak(dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of one device for dtype, where the number comes from)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops(), "measured: float32 2048^3 matmul"
    for name, peaks in PUBLISHED_PEAKS.items():
        if name.lower() in device.device_kind.lower():
            return peaks[dtype], f"published ({name} {dtype} dense)"
    return 0.0, f"unknown device kind {device.device_kind!r}"


def peak_memory() -> tuple[float, str]:
    """(peak megabytes, what was measured): the device allocator's peak where the backend
    reports it (GPU, TPU), else this process's peak resident set (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 20, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host peak RSS"
