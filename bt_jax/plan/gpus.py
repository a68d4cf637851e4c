"""NVIDIA GPU nodes to plan for, compiled by XLA:GPU on a machine with no GPU.

A topology names a GPU and its nodes: "h100:8" is one node of 8 H100s, "h100:4x8" four
nodes of 8 (NODESxGPUS, GPUS at most the node's 8), "h100:1" one GPU. Each GPU's facts are
a data file, `bt_jax/plan/gpus/<kind>.json`, every figure with its source: what XLA:GPU
needs to compile for it (compute capability, SMs, shared memory, L2, memory size), its
device name, and the roofline's peaks (dense bf16 FLOP/s, HBM bandwidth, NVLink within a
node, the network between nodes). From them `target_config` writes the
`GpuTargetConfigProto` that `jax.experimental.topologies.get_topology_desc(platform="cuda")`
turns into compile-only devices; XLA:GPU then compiles for them for real, with its cuDNN
convolutions and NCCL collectives, and no GPU or driver (`pip install 'bt_jax[gpu-plan]'`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
from typing import Sequence

import jax

from bt_jax.errors import ConfigError

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpus")
CUDA_PLUGIN = "jax_plugins.xla_cuda12"
INSTALL_FIX = ("pip install 'bt_jax[gpu-plan]' (XLA:GPU and the CUDA compiler tools it runs), "
               f"or pip install 'jax[cuda12]=={jax.__version__}'")
# The same for compute capabilities 8.0, 9.0 and 10.0: CUDA C++ Programming Guide, table
# "Technical Specifications per Compute Capability".
CUDA_LIMITS = {"threads_per_block_limit": 1024, "threads_per_warp": 32,
               "shared_memory_per_block": 48 * 1024, "threads_per_core_limit": 2048,
               "block_dim_limit_x": 2 ** 31 - 1, "block_dim_limit_y": 65535,
               "block_dim_limit_z": 65535, "registers_per_core_limit": 65536,
               "registers_per_block_limit": 65536, "thread_dim_limit_x": 1024,
               "thread_dim_limit_y": 1024, "thread_dim_limit_z": 64}
# JAX's GPU client reserves this fraction of the device's memory for XLA at start-up
# (XLA_PYTHON_CLIENT_MEM_FRACTION; jax.readthedocs.io/en/latest/gpu_memory_allocation.html).
DEFAULT_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One GPU's facts from its data file: {field: value} and {field: source}."""
    kind: str
    name: str
    values: dict
    sources: dict

    def __getitem__(self, field: str):
        return self.values[field]


@functools.cache
def known() -> dict[str, GpuSpec]:
    """Every GPU with a data file, by kind ("a100", "b200", "h100", "h200")."""
    out = {}
    for filename in sorted(os.listdir(SPEC_DIR)):
        if filename.endswith(".json"):
            kind = filename[:-len(".json")]
            with open(os.path.join(SPEC_DIR, filename)) as f:
                data = json.load(f)
            name = data.pop("name")
            out[kind] = GpuSpec(kind, name, {k: v["value"] for k, v in data.items()},
                                {k: v["source"] for k, v in data.items()})
    return out


def is_gpu_topology(name: str) -> bool:
    """Whether a topology names a known GPU kind ("h100:..."), right or wrong after it."""
    return name.split(":", 1)[0].strip().lower() in known()


def parse_topology(name: str) -> tuple[GpuSpec, int, int]:
    """"h100:8" -> (H100, 1 node, 8 GPUs per node); "h100:4x8" -> (H100, 4, 8). Raises a
    ConfigError naming the notation and the known GPUs."""
    m = re.fullmatch(r"([a-z0-9]+):(?:([0-9]+)x)?([0-9]+)", name.strip().lower())
    gpus = known()
    example = "h100:8 (one node of 8 GPUs) or h100:4x8 (4 nodes of 8)"
    if not m or m.group(1) not in gpus:
        raise ConfigError(f"Unknown GPU topology {name!r}. Give GPU:GPUS or GPU:NODESxGPUS, "
                          f"GPU one of {sorted(gpus)}: e.g. {example}.")
    spec = gpus[m.group(1)]
    nodes, per_node = int(m.group(2) or 1), int(m.group(3))
    limit = spec["gpus_per_node"]
    if nodes < 1 or not 1 <= per_node <= limit:
        raise ConfigError(f"{name!r}: a {spec.name} node holds 1 to {limit} GPUs and a run "
                          f"at least one node; e.g. {example}.")
    return spec, nodes, per_node


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def has_cuda_compiler() -> bool:
    """Whether JAX's CUDA plugin (XLA:GPU) is installed."""
    return _installed(CUDA_PLUGIN)


def _version(distribution: str, default: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return default


def cudnn_version() -> tuple[int, int, int]:
    """The installed cuDNN's version (nvidia-cudnn-cu12), which XLA:GPU's convolution
    rewrites depend on; 9.0.0 where none is installed."""
    parts = [int(x) for x in re.findall(r"[0-9]+", _version("nvidia-cudnn-cu12", "9.0.0"))[:3]]
    return tuple((parts + [0, 0, 0])[:3])


def target_config(spec: GpuSpec) -> str:
    """The `GpuTargetConfigProto` (text format) of one GPU, from its data file, CUDA's
    per-compute-capability limits, and the installed cuDNN's version."""
    major, minor = spec["compute_capability"].split(".")
    info = dict(CUDA_LIMITS, shared_memory_per_core=spec["shared_memory_per_sm"],
                core_count=spec["sm_count"], fpus_per_core=spec["fp32_cores_per_sm"],
                memory_bandwidth=int(spec["hbm_bandwidth"]), l2_cache_size=spec["l2_bytes"],
                clock_rate_ghz=spec["clock_ghz"], device_memory_size=spec["memory_bytes"],
                shared_memory_per_block_optin=spec["shared_memory_per_block_optin"])
    lines = ["gpu_device_info {"]
    lines += [f"  {key}: {value}" for key, value in info.items()]
    lines += [f"  cuda_compute_capability {{ major: {major} minor: {minor} }}", "}",
              'platform_name: "CUDA"']
    cudnn = cudnn_version()
    lines += [f"dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} patch: {cudnn[2]} }}",
              f"device_description_str: {json.dumps(spec['device_kind'])}"]
    return "\n".join(lines) + "\n"


def devices(topology: str) -> tuple[Sequence[jax.Device], GpuSpec, int]:
    """Compile-only devices of the GPU nodes a topology names, node-major (devices
    0..GPUS-1 are node 0's, one process per node), its GpuSpec and GPUs per node."""
    spec, nodes, per_node = parse_topology(topology)
    if not has_cuda_compiler():
        raise ConfigError(f"Planning for {topology!r} needs XLA:GPU, which is not installed: "
                          f"{INSTALL_FIX}.")
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    def describe():
        return topologies.get_topology_desc(platform="cuda", topology_name="",
                                            target_config=target_config(spec),
                                            topology=f"1x{nodes}x{per_node}")
    try:
        try:
            desc = describe()
        except Exception:  # pylint: disable=broad-except  # the plugin did not start
            register_cuda_plugin()
            desc = describe()
    except Exception as e:  # pylint: disable=broad-except  # the plugin's XlaRuntimeError
        raise ConfigError(f"XLA:GPU could not make devices for {topology!r} "
                          f"({str(e).splitlines()[0][:200]}). Check that jax[cuda12] matches "
                          f"jax {jax.__version__}: {INSTALL_FIX}.") from None
    return desc.devices, spec, per_node


def register_cuda_plugin() -> None:
    """Registers JAX's CUDA plugin where it did not start: JAX started its backends with no
    GPU and JAX_PLATFORMS unset, and the plugin's check of the CUDA driver (cuInit) failed
    before it registered (`bt_jax.platforms.skip_absent_accelerators` avoids that for the
    command line). Compile-only devices need no driver: the check is skipped."""
    import importlib  # pylint: disable=import-outside-toplevel
    plugin = importlib.import_module(CUDA_PLUGIN)
    before = os.environ.get("JAX_SKIP_CUDA_CONSTRAINTS_CHECK")
    os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = "1"
    try:
        plugin.initialize()
    finally:
        if before is None:
            os.environ.pop("JAX_SKIP_CUDA_CONSTRAINTS_CHECK")
        else:
            os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] = before


def memory_fraction() -> float:
    """The fraction of a GPU's memory JAX gives XLA: XLA_PYTHON_CLIENT_MEM_FRACTION where
    it is set (as it will be for the run), else 0.75, JAX's default."""
    try:
        value = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""))
    except ValueError:
        return DEFAULT_MEMORY_FRACTION
    return min(max(value, 0.0), 1.0)
