"""ResNets in torchvision's layout, the projector and BarlowTwins."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.models import BarlowTwins, ResNet18, ResNet34, ResNet50, make_backbone


def _abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("ctor,expected", [
    (ResNet50, 23_508_032),   # torchvision resnet50 (25,557,032) minus its fc (2,049,000)
    (ResNet18, 11_176_512),   # resnet18 (11,689,512) minus fc (513,000)
    (ResNet34, 21_284_672),   # resnet34 (21,797,672) minus fc (513,000)
])
def test_parameter_counts_match_torchvision(ctor, expected):
    variables = _abstract_variables(ctor(), (1, 224, 224, 3))
    assert _count(variables["params"]) == expected


def test_resnet50_names_and_shapes_map_to_torchvision():
    params = _abstract_variables(ResNet50(), (1, 224, 224, 3))["params"]
    expected_top = {"conv1", "bn1"} | {f"layer{s}_{i}" for s, n in
                                       zip(range(1, 5), (3, 4, 6, 3)) for i in range(n)}
    assert set(params) == expected_top
    block = params["layer2_0"]  # torchvision layer2.0: stride on conv2, downsample.0/.1
    assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv",
                          "downsample_bn"}
    assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert block["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert "downsample_conv" not in params["layer2_1"]
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)


def test_stems_and_width():
    x = jnp.zeros((2, 32, 32, 3))
    for stem, first_hw in (("imagenet", 8), ("cifar", 32)):
        model = ResNet18(stem=stem, width=0.25)
        variables = model.init(jax.random.key(0), x, train=False)
        _, inter = model.apply(variables, x, train=False, capture_intermediates=True)
        assert inter["intermediates"]["layer1_0"]["__call__"][0].shape == (2, first_hw,
                                                                           first_hw, 16)
        chex.assert_shape(model.apply(variables, x, train=False), (2, 128))
    assert ResNet50(width=0.5).num_features == 1024


def test_zero_init_residual_and_torchvision_conv_init():
    variables = ResNet18(width=0.5, stem="cifar").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = variables["params"]
    assert np.all(params["layer3_1"]["bn2"]["scale"] == 0)
    assert np.all(params["layer3_1"]["bn1"]["scale"] == 1)
    assert np.all(params["layer3_0"]["downsample_bn"]["scale"] == 1)
    k = np.asarray(params["layer3_1"]["conv1"]["kernel"])  # fan_out = 3*3*128
    np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (9 * k.shape[-1])), rtol=0.05)
    off = ResNet18(stem="cifar", width=0.25, zero_init_residual=False)
    p_off = off.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    assert np.all(p_off["layer1_0"]["bn2"]["scale"] == 1)


def test_barlow_twins_network():
    model = BarlowTwins(backbone=ResNet18(stem="cifar", width=0.125), projector_dims=(32, 24, 16))
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    proj = variables["params"]["projector"]
    assert set(proj) == {"linear0", "bn0", "linear1", "bn1", "linear2"}
    assert all(set(proj[f"linear{i}"]) == {"kernel"} for i in range(3))  # no biases
    out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_shape(out["features"], (4, 64))
    chex.assert_shape(out["embedding"], (4, 16))
    assert out["embedding"].dtype == jnp.float32
    # Training mode updates the running statistics of backbone and projector BatchNorms.
    assert not np.allclose(mutated["batch_stats"]["projector"]["bn0"]["mean"], 0)
    feats = model.apply(variables, x, method=BarlowTwins.features)
    chex.assert_trees_all_close(feats, model.apply(variables, x, train=False)["features"])


def test_bfloat16_compute_keeps_float32_params():
    model = ResNet18(stem="cifar", width=0.125, dtype=jnp.bfloat16)
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, x, train=False).dtype == jnp.float32


def test_bad_backbone_stem_and_input_raise():
    with pytest.raises(ValueError, match="resnet18"):
        make_backbone("resnet19")
    with pytest.raises(ValueError, match="stem"):
        ResNet18(stem="tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        ResNet18().init(jax.random.key(0), jnp.zeros((16, 16, 3)))


@pytest.mark.parametrize("build, shape, message", [
    (lambda: ResNet18(), (2, 3, 224, 224), r"channels-first \(NCHW\).*transpose\(0, 2, 3, 1\)"),
    (lambda: ResNet18(stem="cifar"), (2, 1, 32, 32), r"channels-first"),
    (lambda: ResNet18(), (2, 1, 1, 3), r"1x1 px are too small for the 'imagenet' stem.*32x32"),
    (lambda: ResNet18(stem="cifar_pool"), (2, 8, 8, 3), r"too small for the 'cifar_pool' stem"),
    (lambda: ResNet18(width=0.0), (2, 32, 32, 3), r"width must be positive"),
    (lambda: ResNet18(width=-0.5), (2, 32, 32, 3), r"width must be positive"),
])
def test_inputs_the_network_cannot_use_raise_before_any_layer(build, shape, message):
    with pytest.raises(ValueError, match=message):
        build().init(jax.random.key(0), jnp.zeros(shape))


def test_smallest_images_of_each_stem_are_accepted_and_width_checked_early():
    for stem, size in (("imagenet", 32), ("cifar", 8), ("cifar_pool", 16)):
        out = jax.eval_shape(lambda x, s=stem: ResNet18(stem=s, width=0.125).init_with_output(
            jax.random.key(0), x)[0], jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        assert out.shape == (1, 64)
    with pytest.raises(ValueError, match="width must be positive"):
        make_backbone("resnet18", width=0)


def test_cifar_pool_stem_has_the_cifar_weights_at_a_quarter_of_the_flops():
    """stem="cifar_pool": the CIFAR stem's parameters exactly, every stage at half the
    resolution (so about a quarter of the FLOPs), the same [N, F] output."""
    x = jnp.zeros((2, 28, 28, 3))

    def build(stem):
        model = ResNet18(stem=stem, width=0.25)
        variables = model.init(jax.random.key(0), x, train=False)
        flops = jax.jit(lambda v: model.apply(v, x, train=False)).lower(
            variables).compile().cost_analysis()
        flops = (flops[0] if isinstance(flops, list) else flops)["flops"]
        return variables, model.apply(variables, x, train=False), flops

    v_cifar, out_cifar, flops_cifar = build("cifar")
    v_pool, out_pool, flops_pool = build("cifar_pool")
    assert out_pool.shape == out_cifar.shape == (2, 128)
    assert jax.tree.map(jnp.shape, v_pool) == jax.tree.map(jnp.shape, v_cifar)
    assert 0.2 < flops_pool / flops_cifar < 0.35, (flops_pool, flops_cifar)


def test_projector_init_torch_is_pytorch_linear_default_and_lecun_is_1_73x_wider():
    from bt_jax.models import Projector
    fan_in = 512
    x = jnp.zeros((2, fan_in))
    kernels = {init: np.asarray(Projector(dims=(1024, 1024), linear_init=init).init(
        jax.random.key(0), x, train=False)["params"]["linear0"]["kernel"])
        for init in ("lecun", "torch")}
    bound = 1 / np.sqrt(fan_in)     # PyTorch nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    torch_w = kernels["torch"]
    assert np.abs(torch_w).max() <= bound and np.abs(torch_w).max() > 0.99 * bound
    np.testing.assert_allclose(torch_w.std(), bound / np.sqrt(3), rtol=0.01)
    np.testing.assert_allclose(kernels["lecun"].std(), bound, rtol=0.01)
    np.testing.assert_allclose(kernels["lecun"].std() / torch_w.std(), np.sqrt(3), rtol=0.02)
