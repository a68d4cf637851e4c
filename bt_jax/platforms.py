"""Which JAX platforms the entry points start, decided before JAX starts one.

With libtpu installed (`pip install 'bt_jax[tpu]'`, the planner's TPU compiler) JAX tries
the TPU backend first on every machine; where no TPU is attached, libtpu prints about five
start-up errors ("could not determine TPU accelerator type", "INVALID_ARGUMENT: Error:
unexpected worker hostname ...") and spends seconds looking for one. `skip_absent_tpu`
leaves the TPU out there, so training, evaluation and `bt_jax.plan --topology local` start
quietly; plans for TPU slices are unaffected (they compile through libtpu directly, for
compile-only devices). It changes nothing where JAX_PLATFORMS is set, where libtpu is not
installed, or where a TPU is attached. Imports nothing of JAX or of bt_jax.
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


def platforms_without_tpu() -> str:
    """The JAX_PLATFORMS value of this host's usable platforms, the TPU left out: an NVIDIA
    or AMD GPU where one is visible and JAX's plugin for it is installed, then the CPU."""
    found = []
    if os.path.exists("/dev/nvidiactl") and any(map(_installed, _CUDA_PLUGINS)):
        found.append("cuda")
    if os.path.exists("/dev/kfd") and any(map(_installed, _ROCM_PLUGINS)):
        found.append("rocm")
    return ",".join(found + ["cpu"])


def skip_absent_tpu(environ: Optional[dict] = None) -> Optional[str]:
    """Sets JAX_PLATFORMS in `environ` (default os.environ) to `platforms_without_tpu()`
    where libtpu is installed, no TPU is attached and JAX_PLATFORMS is unset; returns what
    it set, else None. Call it before JAX starts a backend (importing JAX is fine)."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_PLATFORMS") or not _installed("libtpu") or tpu_attached():
        return None
    environ["JAX_PLATFORMS"] = platforms_without_tpu()
    if environ is os.environ and "jax" in sys.modules:   # read at import: tell it too
        sys.modules["jax"].config.update("jax_platforms", environ["JAX_PLATFORMS"])
    return environ["JAX_PLATFORMS"]
