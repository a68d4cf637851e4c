"""Test setup: 8 virtual CPU devices, set before JAX starts; experiments/ importable, as it
is for its own scripts (`python experiments/NAME.py` puts their folder on the path)."""
import importlib.util
import os
import sys

import pytest

_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments")
if _EXPERIMENTS not in sys.path:
    sys.path.append(_EXPERIMENTS)

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402  (after the flag on purpose)

assert jax.device_count() == 8, (
    "tests expect 8 CPU devices: JAX was imported before tests/conftest.py set XLA_FLAGS")


# Markers of tests that need an optional package; where it is missing they skip, saying what
# to install (`make test` passes on a machine where only `make install` ran).
OPTIONAL_PACKAGES = {
    "libtpu": ("libtpu", "libtpu is not installed (pip install 'bt_jax[tpu]'): no TPU "
                         "compiler to plan with"),
    "torch": ("torch", "PyTorch is not installed (pip install torch): no reference to compare "
                       "with"),
    "cuda_plugin": ("jax_plugins.xla_cuda12", "JAX's CUDA plugin is not installed (pip install "
                    "'bt_jax[gpu-plan]'): no GPU compiler to plan with"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:      # its parent package (jax_plugins) is missing
        return False


def pytest_collection_modifyitems(config, items):
    del config
    for marker, (module, reason) in OPTIONAL_PACKAGES.items():
        if _installed(module):
            continue
        for item in items:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
