"""Every recipe in configs/ loads, validates and builds its model and optimiser."""
import glob
import importlib.util
import os

import jax
import pytest

from bt_jax import config as config_lib
from bt_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_is_valid(path):
    c = load(path)
    config_lib.validate(c)
    model = train.create_model(c)
    shapes = jax.eval_shape(lambda: train.init_variables(model, jax.random.key(0),
                                                         c.data.image_size))
    assert jax.tree.leaves(shapes["params"])
    train.create_optimizer(c, steps_per_epoch=10, total_steps=100)


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
    w, b = train.learning_rate_schedules(c, steps_per_epoch=100, total_steps=10_000)
    assert float(w(0)) == 0.0
    assert float(w(500)) == pytest.approx(0.2 * 4 * 0.5)
    assert float(w(1000)) == pytest.approx(0.8)
    assert float(b(1000)) == pytest.approx(0.0048 * 4)
    assert float(w(10_000)) == pytest.approx(0.8e-3, rel=1e-3)
    c.optim.scale_lr_by_batch = False
    w, _ = train.learning_rate_schedules(c, steps_per_epoch=100, total_steps=10_000)
    assert float(w(1000)) == pytest.approx(0.2)


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
