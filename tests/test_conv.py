"""bt_jax.models.conv: three implementations of one convolution, and the per-layer choice."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import parallel
from bt_jax.config import ConfigError
from bt_jax.config import base_config, validate
from bt_jax.models import conv, make_backbone
from numpy_reference import conv2d_and_grads

IMPLS = ("xla", "im2col", "dense")


def _value_and_grads(impl, stride, pad):
    def f(x, w, dy):
        y, vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, stride, pad, impl), x, w)
        return (y,) + vjp(dy)
    return jax.jit(f, compiler_options=parallel.compiler_options())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size,k,stride,pad,cin", [
    (6, 3, 1, 1, 8),      # 3x3 stride 1
    (7, 3, 2, 1, 8),      # strided, odd size
    (2, 3, 1, 1, 16),     # a 2x2 map (the last stage of a 28 px "cifar_pool" ResNet)
    (8, 1, 2, 0, 8),      # 1x1 downsample
    (9, 7, 2, 3, 3),      # the ImageNet stem
])
def test_every_impl_gives_the_float64_convolution_and_its_gradients(impl, size, k, stride,
                                                                     pad, cin):
    rng = np.random.default_rng(size * k + stride)
    x = rng.normal(size=(3, size, size, cin)).astype(np.float32)
    w = (0.2 * rng.normal(size=(k, k, cin, 12))).astype(np.float32)
    ho = conv.output_size(size, k, stride, pad)
    dy = rng.normal(size=(3, ho, ho, 12)).astype(np.float32)
    got = _value_and_grads(impl, stride, pad)(x, w, dy)
    for name, g, r in zip(("y", "dx", "dw"), got, conv2d_and_grads(x, w, dy, stride, pad)):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-5, atol=2e-5 * np.abs(r).max(),
                                   err_msg=f"{impl} {name}")


def test_dense_matrix_links_each_output_pixel_to_its_receptive_field():
    """2x2 input, 3x3 kernel, pad 1: every output pixel sees all 4 inputs, through the tap
    at (input - output + 1); a strided 4x4 -> 2x2 layer leaves the zero block where the
    window misses."""
    idx = conv.dense_tap_index(2, 2, 3, 3, 1, 1)
    assert idx.shape == (2, 2, 2, 2)
    assert idx[0, 0, 0, 0] == 4 and idx[1, 1, 0, 0] == 8 and idx[0, 0, 1, 1] == 0
    strided = conv.dense_tap_index(4, 4, 3, 3, 2, 1)
    assert strided[3, 3, 0, 0] == 9          # pixel (3, 3) is outside output (0, 0)'s window
    assert strided[0, 0, 0, 0] == 4          # ... and (0, 0) is its centre


@pytest.mark.parametrize("shape,kernel,stride,expected", [
    ((512, 2, 2, 128), (3, 3, 128, 128), 1, "dense"),      # 2x2 maps: dense
    ((512, 2, 2, 2048), (3, 3, 2048, 2048), 1, "xla"),     # ... unless the matrix is huge
    ((512, 4, 4, 64), (3, 3, 64, 64), 1, "xla"),           # 4x4 stride 1
    ((512, 4, 4, 64), (3, 3, 64, 128), 2, "im2col"),       # strided, 2x2 outputs
    ((512, 14, 14, 32), (3, 3, 32, 64), 2, "xla"),         # strided, 7x7 outputs
    ((512, 14, 14, 16), (1, 1, 16, 32), 2, "im2col"),      # strided 1x1 downsample
    ((512, 28, 28, 3), (3, 3, 3, 16), 1, "xla"),           # the stem
    ((512, 14, 14, 16), (3, 3, 16, 16), 1, "xla"),         # stride-1 layers
    ((512, 7, 7, 32), (3, 3, 32, 32), 1, "xla"),
    ((256, 224, 224, 3), (7, 7, 3, 64), 2, "xla"),         # the ImageNet stem
    ((4096, 4, 4, 512), (1, 1, 512, 512), 2, "im2col"),
    ((131072, 4, 4, 512), (1, 1, 512, 512), 2, "xla"),     # patches would take 1 GiB
])
def test_auto_choice_on_cpu(shape, kernel, stride, expected):
    pad = kernel[0] // 2
    assert conv.choose_conv_impl(shape, kernel, stride, pad, backend="cpu") == expected


def test_auto_is_xla_off_the_cpu():
    for backend in ("gpu", "tpu"):
        assert conv.choose_conv_impl((8, 2, 2, 64), (3, 3, 64, 64), 1, 1,
                                     backend=backend) == "xla"


def test_unknown_impl_is_refused_by_name():
    with pytest.raises(ValueError, match="model.conv_impl"):
        conv.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), 1, 1, "winograd")
    c = base_config()
    c.model.conv_impl = "winograd"
    with pytest.raises(ConfigError, match="model.conv_impl must be one of"):
        validate(c)


def test_conv_module_has_nn_conv_parameters_and_output():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    ours = conv.Conv(8, 3, 2, padding=1, impl="im2col")
    theirs = nn.Conv(8, (3, 3), 2, padding=((1, 1), (1, 1)), use_bias=False)
    v = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow   # ~70 s on a 2-core CPU
def test_backbone_is_the_same_function_whatever_the_impl():
    """A 16 px "cifar_pool" ResNet-18 (maps 16, 8, 4, 2, 1: "auto" uses every form
    somewhere): the same parameters, features and parameter gradients as with XLA's
    convolutions only."""
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    nets = {impl: make_backbone("resnet18", stem="cifar_pool", width=0.125, conv_impl=impl)
            for impl in ("xla", "auto")}
    v = nets["xla"].init(jax.random.key(1), x, train=False)

    def loss(params, net):
        y, _ = net.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y))

    assert (jax.tree.structure(nets["auto"].init(jax.random.key(1), x, train=False))
            == jax.tree.structure(v))
    np.testing.assert_allclose(nets["auto"].apply(v, x, train=False),
                               nets["xla"].apply(v, x, train=False), rtol=1e-4, atol=1e-5)
    got, ref = (jax.grad(loss)(v["params"], nets[impl]) for impl in ("auto", "xla"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * np.abs(b).max() + 1e-6)
