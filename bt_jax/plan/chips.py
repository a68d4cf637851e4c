"""The chips a plan is for: published peak figures, and the devices to compile for.

A TPU topology ("v5e:4x4", "v4:2x2x4", ...) becomes compile-only devices of the real TPU
compiler (libtpu), and a GPU topology ("h100:8", "a100:4x8", ... : `gpus`) compile-only
devices of XLA:GPU, on a machine with neither (`jax.experimental.topologies`). "local" is
this machine's own devices: the CPU, or a GPU where there is one.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import importlib.util
import os
import re
import time
from typing import Optional, Sequence

import jax
import numpy as np

from bt_jax import platforms
from bt_jax.errors import ConfigError
from bt_jax.plan import gpus

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published peak figures of one chip (per chip, not per core).

    bf16_flops: dense bf16 FLOP/s; hbm_bytes: memory capacity; hbm_bandwidth: bytes/s;
    ici_bandwidth: bytes/s a chip's collectives move within its interconnect domain (a
    TPU slice: chip-to-chip, all links, both directions; a GPU node: NVLink, each way);
    network_bandwidth: bytes/s each way between nodes per GPU (0: one domain, as a TPU
    slice); devices_per_node: GPUs sharing one NVLink domain (0: all of them); source:
    where the figures are published.
    """
    name: str
    bf16_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    ici_bandwidth: float
    source: str
    megacore: bool = False      # two TensorCores driven as one device (v4, v5p)
    network_bandwidth: float = 0.0
    devices_per_node: int = 0


TPU_CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1200e9, 6 * 2 * 45e9,
               "cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s); "
               "ICI: 6 links x 45 GB/s each way (jax-ml.github.io/scaling-book/tpus)",
               megacore=True),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9, 400e9,
                "cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, "
                "ICI 400 GB/s bidirectional per chip)"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9, 1200e9,
                "cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, "
                "ICI 1200 GB/s bidirectional per chip)", megacore=True),
    "v6e": Chip("TPU v6e", 918e12, 32 * GiB, 1638e9, 800e9,
                "cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GiB HBM at 1638 GB/s, "
                "ICI 800 GB/s bidirectional per chip)"),
}
EXAMPLE_TOPOLOGIES = ("v4:2x2x4", "v5e:4x4", "v5p:2x2x4", "v6e:4x4", "h100:8", "a100:4x8",
                      "local")
LIBTPU_FIX = ("pip install 'bt_jax[tpu]' (libtpu, the TPU compiler), or pip install "
              f"'jax[tpu]=={jax.__version__}' (jax[tpu] pinned to the installed jax)")


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """"v5e:4x4" -> ("v5e", (4, 4)). Raises a ConfigError naming the known chips."""
    m = re.fullmatch(r"(v[0-9]+[a-z]*):([0-9]+(?:x[0-9]+){1,2})", name.strip())
    if not m or m.group(1) not in TPU_CHIPS:
        raise ConfigError(
            f"Unknown topology {name!r}. Give a TPU slice CHIP:SHAPE with CHIP one of "
            f"{sorted(TPU_CHIPS)}, GPU nodes GPU:GPUS or GPU:NODESxGPUS with GPU one of "
            f"{sorted(gpus.known())} (e.g. {', '.join(EXAMPLE_TOPOLOGIES[:-1])}), or 'local' "
            "for this machine's own devices.")
    return m.group(1), tuple(int(x) for x in m.group(2).split("x"))


def check_topology(name: str) -> None:
    """Raises a ConfigError for a topology that names no TPU slice, GPU nodes or "local"."""
    if name == "local":
        return
    if gpus.is_gpu_topology(name):
        gpus.parse_topology(name)
    else:
        parse_topology(name)


def libtpu_build() -> str:
    """The libtpu that compiles, e.g. 'libtpu 0.0.42.1', or 'libtpu 0.0.52 (TPU_LIBRARY_PATH=
    ...)' where that variable points jax at another build (a pip --target install of a newer
    libtpu beside the pinned one: 0.0.42.1 crashes compiling a train step for v6e)."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if not path:
        try:
            return f"libtpu {importlib.metadata.version('libtpu')}"
        except importlib.metadata.PackageNotFoundError:
            return "libtpu (version unknown)"
    infos = glob.glob(os.path.join(os.path.dirname(os.path.dirname(path)), "libtpu-*.dist-info"))
    version = os.path.basename(infos[0])[len("libtpu-"):-len(".dist-info")] if infos else "?"
    return f"libtpu {version} (TPU_LIBRARY_PATH={path})"


def accelerator_type(topology: str) -> str:
    """Cloud TPU's accelerator type of a slice: "v5e:4x4" -> "v5litepod-16", "v4:2x2x4" ->
    "v4-32" (v4 and v5p count TensorCores, two per chip), "v6e:2x2" -> "v6e-4"."""
    kind, shape = parse_topology(topology)
    chips_in_slice = int(np.prod(shape))
    if kind == "v5e":
        return f"v5litepod-{chips_in_slice}"
    return f"{kind}-{chips_in_slice * (2 if TPU_CHIPS[kind].megacore else 1)}"


def tpu_devices(topology: str) -> tuple[Sequence[jax.Device], Chip]:
    """Compile-only devices of a TPU slice, one per chip, and the chip's figures."""
    kind, _ = parse_topology(topology)
    if not has_libtpu():
        raise ConfigError(f"Planning for {topology!r} needs the TPU compiler, which is not "
                          f"installed: {LIBTPU_FIX}.")
    # Compile-only devices hold no chip: let several processes (pytest workers, a plan
    # beside another) load libtpu, which otherwise takes a lock file for the machine's TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not platforms.tpu_attached():
        # libtpu's start-up looks for this host's TPU (GCE metadata) and prints five errors
        # where there is none; tell it the slice being planned and a one-host worker list.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(topology))
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    chip = TPU_CHIPS[kind]
    options = {"chip_config_name": "megacore"} if chip.megacore else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, **options)
    except Exception as e:  # pylint: disable=broad-except  # libtpu's INVALID_ARGUMENT
        why = str(e).splitlines()[0]
        raise ConfigError(f"libtpu refused the topology {topology!r} ({why}). Use a slice "
                          f"shape the chip has, e.g. {', '.join(EXAMPLE_TOPOLOGIES[:-1])}.") \
            from None
    return desc.devices, chip


def measured_cpu_chip(seconds: float = 2.0) -> Chip:
    """This CPU's ceilings, measured (no published figure fits every machine): float32
    FLOP/s of a 2048^3 matmul through XLA, and bytes/s of a 256 MiB copy. What a program
    can reach here at best; labelled as measured wherever it is shown."""
    dot = jax.jit(lambda a, b: a @ b)
    a = jax.numpy.ones((2048, 2048), jax.numpy.float32)
    flops = 2 * 2048 ** 3 / _median_seconds(lambda: dot(a, a).block_until_ready(), seconds)
    x = jax.numpy.ones((64 * 2 ** 20,), jax.numpy.float32)
    copy = jax.jit(lambda v: v * 1.0001)
    bandwidth = 2 * x.nbytes / _median_seconds(lambda: copy(x).block_until_ready(), seconds)
    return Chip("this machine's CPU", flops, 0.0, bandwidth, 0.0,
                "measured here: median of a jitted 2048^3 float32 matmul and of a 256 MiB "
                "elementwise pass (read + write)")


def _median_seconds(fn, budget: float) -> float:
    fn()   # compile and warm up
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def gpu_chip(spec: "gpus.GpuSpec", per_node: int) -> Chip:
    """A GPU's roofline figures from its data file (`gpus.known()`), for nodes of
    per_node GPUs."""
    fields = ("bf16_flops", "memory_bytes", "hbm_bandwidth", "nvlink_bandwidth",
              "network_bandwidth")
    return Chip(spec.name, spec["bf16_flops"], spec["memory_bytes"], spec["hbm_bandwidth"],
                spec["nvlink_bandwidth"], "; ".join(spec.sources[f] for f in fields),
                network_bandwidth=spec["network_bandwidth"], devices_per_node=per_node)


def gpu_devices(topology: str) -> tuple[Sequence[jax.Device], Chip]:
    """Compile-only devices of GPU nodes ("h100:8", "h100:4x8"), and their Chip."""
    devices, spec, per_node = gpus.devices(topology)
    return devices, gpu_chip(spec, per_node)


def local_devices() -> tuple[Sequence[jax.Device], Chip]:
    """This machine's devices and their figures (GPU: published; CPU: measured)."""
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "gpu":
        for spec in gpus.known().values():
            if spec.kind.upper() in kind.upper():
                return devices, gpu_chip(spec, len(devices))
        raise ConfigError(f"No published figures for the GPU {kind!r}; known: "
                          f"{sorted(gpus.known())}. Add its data file to bt_jax/plan/gpus/.")
    return devices, measured_cpu_chip()


def devices_for(topology: str) -> tuple[Sequence[jax.Device], Chip]:
    """The devices a plan compiles for and their chip: a TPU slice, GPU nodes, or
    "local"."""
    if topology == "local":
        return local_devices()
    if gpus.is_gpu_topology(topology):
        return gpu_devices(topology)
    return tpu_devices(topology)


def host_memory_bytes() -> float:
    """This machine's memory: its physical memory, or the container's limit where that is
    smaller (cgroup v2's memory.max, v1's memory.limit_in_bytes)."""
    total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, float(limit))
    return total


def memory_limit(chip: Chip, devices: Sequence[jax.Device]) -> tuple[Optional[float], str]:
    """(bytes per device a program may use, what that figure is): on the CPU this
    machine's memory shared by its CPU devices (`host_memory_bytes`); the device's own
    limit where it reports one (a local GPU); the share of a planned GPU's memory JAX
    gives XLA (`gpus.memory_fraction`: 0.75 by default); else the chip's published
    capacity (None where there is none)."""
    platform = getattr(devices[0], "platform", None)
    if platform == "cpu":
        host = host_memory_bytes()
        return host / len(devices), (f"this machine's {host / GiB:.1f} GiB of host memory, "
                                     f"shared by {len(devices)} CPU device(s)")
    limit = _bytes_limit(devices)
    if limit:
        return limit, "the device's bytes_limit"
    if platform == "gpu" and chip.hbm_bytes:
        fraction = gpus.memory_fraction()
        return chip.hbm_bytes * fraction, (f"the {fraction:.2f} of the GPU's "
                                           f"{chip.hbm_bytes / GiB:.1f} GiB JAX gives XLA")
    if chip.hbm_bytes:
        return chip.hbm_bytes, f"the {chip.name}'s HBM"
    return None, "no memory figure for this device: not compared"


def _bytes_limit(devices: Sequence[jax.Device]) -> Optional[float]:
    """The device's own memory limit where it reports one (a local GPU), else None."""
    try:
        stats = devices[0].memory_stats()
    except Exception:  # pylint: disable=broad-except  # compile-only devices have none
        return None
    return float(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def hbm_of(chip: Chip, devices: Sequence[jax.Device]) -> Optional[float]:
    """Memory per device a program may use (`memory_limit`'s bytes)."""
    return memory_limit(chip, devices)[0]
