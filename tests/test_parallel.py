"""parallel.compiler_options: the XLA:CPU options bt_jax compiles its steps with."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import parallel, train
from bt_jax.models import conv
from numpy_reference import conv2d_and_grads
from test_train import _batch, tiny_config


def _conv(x, w, stride, pad):
    return conv.conv2d(x, w, stride, pad, "xla")   # XLA's convolution, whatever "auto" picks


def _conv_value_and_grads(options, stride, pad):
    """jit(y, dx, dw) of a convolution and the gradients of sum(y * dy), with options."""
    def f(x, w, dy):
        y, vjp = jax.vjp(lambda x, w: _conv(x, w, stride, pad), x, w)
        return (y,) + vjp(dy)
    return jax.jit(f, compiler_options=options)


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
def test_cpu_options_give_the_float64_convolution_and_its_gradients(k, stride, pad):
    """The ResNet convolutions (3x3, strided 3x3, 1x1 downsample, 7x7 stem), value and both
    gradients, compiled with bt_jax's CPU options, against float64 NumPy."""
    rng = np.random.default_rng(k + stride)
    # 32 and 64 channels: shapes where XLA's defaults would have used YNNPACK.
    x = rng.normal(size=(4, 12, 12, 32)).astype(np.float32)
    w = (0.1 * rng.normal(size=(k, k, 32, 64))).astype(np.float32)
    ho = (12 + 2 * pad - k) // stride + 1
    dy = rng.normal(size=(4, ho, ho, 64)).astype(np.float32)
    options = parallel.compiler_options("cpu")
    assert options == parallel.CPU_COMPILER_OPTIONS      # this jaxlib knows the option
    got = _conv_value_and_grads(options, stride, pad)(x, w, dy)
    for g, r in zip(got, conv2d_and_grads(x, w, dy, stride, pad)):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=1e-5 * np.abs(r).max())


def _uses_ynnpack(jitted, *args) -> bool:
    return "ynn_fusion" in jitted.lower(*args).compile().as_text()


@pytest.mark.slow    # compiles the step twice: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_the_train_step_is_compiled_without_ynnpack_convolutions():
    """XLA's default CPU options put convolutions into YNNPACK fusions (slow weight gradients
    on x86, PERF_NOTES section 4); the train step, built the ordinary way, must not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 32)).astype(np.float32)   # XLA picks YNNPACK from 32 channels
    w = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    if not _uses_ynnpack(_conv_value_and_grads({}, 1, 1), x, w, x):
        pytest.skip("this jaxlib's XLA:CPU does not use YNNPACK for convolutions by default")
    assert not _uses_ynnpack(_conv_value_and_grads(parallel.compiler_options(), 1, 1), x, w, x)

    c = tiny_config()
    c.model.width = 0.5                                     # 32 to 256 channels
    mesh = parallel.make_mesh()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=2, total_steps=2)
    state = parallel.replicate(
        train.init_state(train.create_model(c.model), tx, jax.random.key(0), 8), mesh)
    model = train.create_model(c.model, parallel.BATCH_AXIS)
    batch = parallel.host_to_global(_batch(c), mesh)
    assert not _uses_ynnpack(train.make_train_step(model, tx, c.loss, mesh), state, batch)
    # xla_options={} is the way back to XLA's defaults (the benchmark's baseline, which
    # composes the step from its body).
    default_xla = parallel.data_parallel(train.train_step_body(model, tx, c.loss), mesh,
                                         num_replicated_args=1, donate_state=True,
                                         xla_options={})
    assert _uses_ynnpack(default_xla, state, batch)


def test_compiler_options_only_on_cpu_and_only_where_xla_knows_them(monkeypatch):
    assert parallel.compiler_options("gpu") == {}
    assert parallel.compiler_options("tpu") == {}
    assert parallel.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    # An XLA without the option (older jaxlibs): nothing is passed, nothing fails.
    monkeypatch.setattr(parallel, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
    assert parallel.compiler_options("cpu") == {}
    step = parallel.data_parallel(lambda x: jax.lax.psum(jnp.sum(x), parallel.BATCH_AXIS),
                                  parallel.make_mesh(), num_replicated_args=0)
    assert float(step(jnp.ones(8))) == 8.0
