"""Compile lines: a program compiled ahead with a line before and after is not compiled
again by its first call (JAX's compilation cache holds it), on one device and on the
trainer's 8-device, state-donating data-parallel program."""
import re

import jax
import jax.numpy as jnp
import pytest

from bt_jax import parallel, progress

# The event JAX records once per backend compile (jax/_src/dispatch.py).
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    """A list that gets the name of each program the backend compiles while the test runs
    ("jit(<function>)")."""
    seen = []

    def listener(event, duration_secs, fun_name="", **kwargs):   # pylint: disable=unused-argument
        if event == BACKEND_COMPILE:
            seen.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


def _check_lines(lines, name):
    assert len(lines) == 2 and lines[0] == f"compiling {name} ..."
    assert re.fullmatch(rf"compiled {name} in \d+\.\d s", lines[1])


def test_compiles_ahead_says_so_and_compiles_once(compiles):
    def affine_map(x):
        return 3.0 * x - 1.0

    lines = []
    step = progress.CompilesAhead("the affine map", jax.jit(affine_map), lines.append)
    assert step.seconds is None
    x = step(jnp.arange(16.0))
    x = step(step(x))
    assert jnp.allclose(x, 27.0 * jnp.arange(16.0) - 13.0)
    _check_lines(lines, "the affine map")
    assert len([c for c in compiles if "affine_map" in c]) == 1   # jit(affine_map)
    assert step.seconds >= 0


def test_the_data_parallel_step_compiled_ahead_is_not_compiled_again(compiles):
    """As the trainer calls it: the state replicated and donated, the batch split."""
    mesh = parallel.make_mesh()

    def summing_step(state, batch):
        total = jax.lax.psum(jnp.sum(batch), parallel.BATCH_AXIS)
        return state + total, {"total": total}

    lines = []
    step = progress.CompilesAhead("the step", parallel.data_parallel(
        summing_step, mesh, donate_state=True), lines.append)
    state = parallel.replicate(jnp.zeros((4,)), mesh)
    batch = jax.device_put(jnp.ones((16, 3)), parallel.batch_sharded(mesh))
    for _ in range(3):
        state, metrics = step(state, batch)
    assert jnp.allclose(state, 3 * 48.0) and float(metrics["total"]) == 48.0
    _check_lines(lines, "the step")
    assert len([c for c in compiles if "summing_step" in c]) == 1


def test_quiet_prints_nothing(capsys):
    progress.quiet("a line")
    assert capsys.readouterr().out == ""
