"""What a command printed on stderr, less the lines a third-party library prints there.

JAX's CUDA plugin (`pip install 'bt_jax[gpu-plan]'`, the planner's XLA:GPU compiler)
logs two lines from C++ whenever JAX starts its backends on a machine without CUDA
drivers, even with JAX_PLATFORMS=cpu; bt_jax cannot silence them. The tests of
one-line errors read the lines that are bt_jax's."""

import importlib.util

CUDA_PLUGIN_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called",
                     "cudart_stub.cc:")


def own_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr, without the CUDA plugin's start-up lines."""
    return [line for line in stderr.splitlines()
            if line.strip() and not any(noise in line for noise in CUDA_PLUGIN_NOISE)]


def cuda_plugin_installed() -> bool:
    """Whether JAX's CUDA plugin is installed (its lines may then be on stderr)."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ImportError:   # no jax_plugins package at all
        return False
