"""Which JAX platforms the entry points start, decided before JAX starts one.

With libtpu installed (`pip install 'bt_jax[tpu]'`, the planner's TPU compiler) JAX tries
the TPU backend first on every machine; where no TPU is attached, libtpu prints about five
start-up errors ("could not determine TPU accelerator type", "INVALID_ARGUMENT: Error:
unexpected worker hostname ...") and spends seconds looking for one. With JAX's CUDA
plugin installed (`pip install 'bt_jax[gpu-plan]'`, the planner's GPU compiler) and no
NVIDIA GPU, JAX prints a traceback ("operation cuInit(0) failed") at start-up.
`skip_absent_accelerators` leaves such platforms out, so training, evaluation and
`bt_jax.plan --topology local` start quietly; plans for TPU slices and GPU nodes are
unaffected (they compile for compile-only devices, which need no chip). It changes nothing
where JAX_PLATFORMS is set or where every installed compiler has its accelerator. Imports
nothing of JAX or of bt_jax.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys
from typing import Optional

# Google's PCI vendor id: a TPU chip attached to this host shows up under it.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_CUDA_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_cuda12_plugin",
                 "jax_cuda13_plugin")
_ROCM_PLUGINS = ("jax_plugins.xla_rocm", "jax_rocm60_plugin", "jax_rocm7_plugin")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a parent package that is missing
        return False


def tpu_attached() -> bool:
    """Whether a TPU chip is attached to this host: a Google PCI device, or the device
    files TPU VMs have (/dev/accel*, /dev/vfio/<n>)."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def nvidia_gpu_visible() -> bool:
    """Whether an NVIDIA driver shows a GPU on this host."""
    return os.path.exists("/dev/nvidiactl")


def usable_platforms() -> str:
    """The JAX_PLATFORMS value of this host's usable platforms: the TPU where one is
    attached and libtpu installed, an NVIDIA or AMD GPU where one is visible and JAX's
    plugin for it is installed, then the CPU."""
    found = []
    if _installed("libtpu") and tpu_attached():
        found.append("tpu")
    if nvidia_gpu_visible() and any(map(_installed, _CUDA_PLUGINS)):
        found.append("cuda")
    if os.path.exists("/dev/kfd") and any(map(_installed, _ROCM_PLUGINS)):
        found.append("rocm")
    return ",".join(found + ["cpu"])


def skip_absent_accelerators(environ: Optional[dict] = None) -> Optional[str]:
    """Sets JAX_PLATFORMS in `environ` (default os.environ) to `usable_platforms()` where
    JAX_PLATFORMS is unset and an accelerator's compiler is installed with no such
    accelerator here (libtpu with no TPU; JAX's CUDA plugin with no NVIDIA GPU); returns
    what it set, else None. Call it before JAX starts a backend (importing JAX is fine)."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_PLATFORMS"):
        return None
    absent_tpu = _installed("libtpu") and not tpu_attached()
    absent_gpu = any(map(_installed, _CUDA_PLUGINS)) and not nvidia_gpu_visible()
    if not (absent_tpu or absent_gpu):
        return None
    environ["JAX_PLATFORMS"] = usable_platforms()
    if environ is os.environ and "jax" in sys.modules:   # read at import: tell it too
        sys.modules["jax"].config.update("jax_platforms", environ["JAX_PLATFORMS"])
    return environ["JAX_PLATFORMS"]
