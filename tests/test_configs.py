"""Every recipe in configs/ loads, validates and builds its model and optimiser."""
import glob
import os

import jax
import pytest

from bt_jax import config as config_lib
from bt_jax import cli, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every recipe: each file of configs/ but its shared parts (common.py) and the package file.
RECIPES = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("common.py", "__init__.py"))
# Compiling an 8-device step takes 25-90 s per recipe on a 2-core CPU: `make test-slow` (and
# CI) steps every recipe; `make test` (under 10 minutes) none.
DEFAULT_STEP_RECIPES = ()
STEP_RECIPES = [p if os.path.basename(p) in DEFAULT_STEP_RECIPES
                else pytest.param(p, marks=pytest.mark.slow) for p in RECIPES]


def load(path):
    return cli.load_recipe(path)


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_is_valid(path):
    c = load(path)
    config_lib.validate(c)
    model = train.create_model(c.model)
    shapes = jax.eval_shape(lambda: train.init_variables(model, jax.random.key(0),
                                                         c.data.image_size))
    assert jax.tree.leaves(shapes["params"])
    train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=10, total_steps=100)


# torchvision's parameter counts less the fc head: resnet18 11,689,512 - 513,000 and
# resnet50 25,557,032 - 2,049,000, with its 7x7 stem conv (9,408 weights); the CIFAR stems'
# 3x3 conv has 1,728. Last-stage channels: 512 and 2048.
TORCHVISION_BACKBONE_PARAMS = {"resnet18": 11_176_512, "resnet50": 23_508_032}
LAST_STAGE_CHANNELS = {"resnet18": 512, "resnet50": 2048}
STEM_CONV_WEIGHTS = {"imagenet": 9_408, "cifar": 1_728, "cifar_pool": 1_728}


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_builds_the_model_it_states(path):
    """The recipe's own model, not shrunk, at its own image size (shapes only): the
    backbone's features and parameter count (torchvision's at width 1), and the
    projector's layers as model.projector_dims lists them."""
    import jax.numpy as jnp
    import numpy as np
    c = load(path)
    m, s = c.model, c.data.image_size
    model = train.create_model(m)
    v = jax.eval_shape(lambda: train.init_variables(model, jax.random.key(0), s))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, s, s, 3)), train=False), v)
    features = int(LAST_STAGE_CHANNELS[m.backbone] * m.width)
    assert out["features"].shape == (2, features)
    assert out["embedding"].shape == (2, m.projector_dims[-1])
    proj = v["params"]["projector"]
    widths = [features] + list(m.projector_dims)
    assert [proj[f"linear{i}"]["kernel"].shape for i in range(len(m.projector_dims))] == \
        list(zip(widths[:-1], widths[1:]))
    if m.width == 1.0:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]["backbone"]))
        assert count == (TORCHVISION_BACKBONE_PARAMS[m.backbone] - STEM_CONV_WEIGHTS["imagenet"]
                         + STEM_CONV_WEIGHTS[m.stem])


@pytest.mark.parametrize("path", STEP_RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_loss_and_optimiser_train_one_step_on_a_shrunk_model(path):
    """The recipe's loss and optimiser settings (objective, scale, LARS clipping, the
    schedules and their batch scaling) on its model shrunk in width, projector, image
    size and batch: one data-parallel step on the 8 CPU devices uses the recipe's
    learning rate, gives the loss of the same batch on one device, and moves the
    weights once the warm-up's rate is above 0."""
    import numpy as np
    from bt_jax import parallel
    from bt_jax.models.resnet import min_image_size
    c = load(path)
    # The smallest images the recipe's stem accepts (16 px, or 32 for the ImageNet stem).
    c.batch_size, c.data.image_size = 16, max(16, min_image_size(c.model.stem))
    c.model.width, c.model.projector_dims = 0.0625, (32, 32)
    mesh = parallel.make_mesh()
    weight_lr, bias_lr = train.learning_rate_schedules(c.optim, c.batch_size,
                                                       steps_per_epoch=10, total_steps=100)
    tx = train.state.lars_of(c.optim, weight_lr, bias_lr)
    fresh = train.init_state(train.create_model(c.model), tx, jax.random.key(0),
                             c.data.image_size)
    step = train.make_train_step(train.create_model(c.model, axis_name=parallel.BATCH_AXIS),
                                 tx, c.loss, mesh, learning_rate=weight_lr)
    s = c.data.image_size
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, s, s, 3)).astype(np.float32)
    batch = {"view_a": x, "view_b": (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32)}
    one_device = jax.jit(lambda p, bs, b: train.loss_and_grads(
        p, bs, b, model=train.create_model(c.model), loss_cfg=c.loss, axis_name=None)[0])(
        fresh.params, fresh.batch_stats, batch)
    before = jax.device_get(fresh.params)      # the step donates the state's buffers
    state, metrics = step(parallel.replicate(fresh, mesh), parallel.host_to_global(batch, mesh))
    np.testing.assert_allclose(float(metrics["loss"]), float(one_device), rtol=1e-4)
    # The warm-up starts at rate 0: the second step is the first that moves the weights.
    state, metrics = step(state, parallel.host_to_global(batch, mesh))
    assert int(state.step) == 2 and float(weight_lr(1)) > 0
    assert float(metrics["learning_rate"]) == pytest.approx(float(weight_lr(1)))
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
    assert max(moved) > 0


def test_validate_names_the_bad_field():
    c = config_lib.base_config()
    c.model.dtype = "float16"
    with pytest.raises(config_lib.ConfigError, match="model.dtype"):
        config_lib.validate(c)
    c = config_lib.base_config()
    c.loss.redundancy = "both"
    with pytest.raises(config_lib.ConfigError, match="loss.redundancy"):
        config_lib.validate(c)


def test_learning_rates_scale_with_batch_and_follow_the_schedule():
    c = config_lib.base_config()     # paper: weights 0.2, biases 0.0048, times batch/256
    c.batch_size = 1024
    c.optim.warmup_epochs = 10
    w, b = train.learning_rate_schedules(c.optim, c.batch_size, steps_per_epoch=100,
                                         total_steps=10_000)
    assert float(w(0)) == 0.0
    assert float(w(500)) == pytest.approx(0.2 * 4 * 0.5)
    assert float(w(1000)) == pytest.approx(0.8)
    assert float(b(1000)) == pytest.approx(0.0048 * 4)
    assert float(w(10_000)) == pytest.approx(0.8e-3, rel=1e-3)
    c.optim.scale_lr_by_batch = False
    w, _ = train.learning_rate_schedules(c.optim, c.batch_size, steps_per_epoch=100,
                                         total_steps=10_000)
    assert float(w(1000)) == pytest.approx(0.2)


def test_warm_up_may_be_a_fraction_of_an_epoch():
    c = config_lib.base_config()
    c.batch_size = 256
    c.optim.warmup_epochs = 0.05       # 12 of 234 steps (the small ablation scale)
    w, _ = train.learning_rate_schedules(c.optim, c.batch_size, steps_per_epoch=234,
                                         total_steps=120)
    assert float(w(6)) == pytest.approx(0.2 * 6 / 12)
    assert float(w(12)) == pytest.approx(0.2)
    assert float(w(13)) < 0.2


def test_core_imports_without_tensorflow():
    """bt_jax.losses, .models and .optim work where TensorFlow is absent (e.g. a GPU box)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "import jax.numpy as jnp\n"
            "from bt_jax.losses import barlow_twins_loss\n"
            "from bt_jax.models import ResNet50, BarlowTwins\n"
            "from bt_jax.optim import lars\n"
            "from bt_jax import parallel, train\n"
            "print(float(barlow_twins_loss(jnp.eye(4), jnp.eye(4))))\n"
            "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"), timeout=120)
    assert r.returncode == 0, r.stderr


def test_recipes_hold_design_md_numbers():
    paper = load(os.path.join(ROOT, "configs", "imagenet.py"))
    assert (paper.model.backbone, paper.model.projector_dims, paper.batch_size,
            paper.num_epochs) == ("resnet50", (8192, 8192, 8192), 2048, 1000)
    assert (paper.loss.lambd, paper.optim.lr_weights, paper.optim.lr_biases,
            paper.optim.weight_decay, paper.optim.eta, paper.optim.warmup_epochs,
            paper.optim.end_lr_fraction) == (0.0051, 0.2, 0.0048, 1.5e-6, 0.001, 10, 1e-3)
    assert paper.optim.scale_lr_by_batch and not paper.optim.clip_trust_ratio
    assert (paper.data.augment.blur_prob, paper.data.augment.solarize_prob) == (
        (1.0, 0.1), (0.0, 0.2))
    for name in ("cifar10", "cifar100"):
        c = load(os.path.join(ROOT, "configs", f"{name}.py"))
        assert c.data.name == name and c.model.stem == "cifar"
        assert (c.model.projector_dims, c.loss.scale, c.optim.eta, c.optim.weight_decay,
                c.optim.lr_weights, c.batch_size) == ((2048, 2048, 2048), 0.1, 0.02, 1e-4,
                                                      0.3, 256)
        assert c.optim.clip_trust_ratio and not c.optim.scale_lr_by_batch


def test_config_diff_lists_changed_fields_readably():
    a = config_lib.base_config()
    b = config_lib.base_config()
    assert config_lib.diff(a, b) == []
    b.batch_size = 512
    b.model.projector_dims = [8192, 8192, 8192]   # a list equal to the tuple: no change
    b.data.augment.blur_prob = (1.0, 0.0)
    assert config_lib.diff(a, b) == ["batch_size: 2048 -> 512",
                                     "data.augment.blur_prob: (1.0, 0.1) -> (1.0, 0.0)"]
