"""What a command printed on stderr, less the lines a third-party library prints there.

JAX's CUDA plugin (`pip install 'bt_jax[gpu-plan]'`, the planner's XLA:GPU compiler)
logs two lines from C++ whenever JAX starts its backends on a machine without CUDA
drivers, even with JAX_PLATFORMS=cpu; bt_jax cannot silence them. The tests of
one-line errors read the lines that are bt_jax's."""

CUDA_PLUGIN_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called",
                     "cudart_stub.cc:")


def own_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr, without the CUDA plugin's start-up lines."""
    return [line for line in stderr.splitlines()
            if line.strip() and not any(noise in line for noise in CUDA_PLUGIN_NOISE)]
