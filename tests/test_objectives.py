"""The objective registry and VICReg (Bardes et al., ICLR 2022) against float64 NumPy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax import losses, parallel, train
from numpy_reference import numerical_grad, vicreg_and_grads


def _views(seed, n=24, d=12):
    rng = np.random.default_rng(seed)
    # Some features with std above 1 and some below, so the variance hinge is both on and off.
    z_a = rng.normal(size=(n, d)) * rng.uniform(0.3, 2.0, size=d)
    z_b = z_a + 0.4 * rng.normal(size=(n, d))
    return z_a, z_b


def test_the_numpy_reference_gradients_match_central_differences():
    z_a, z_b = _views(0, n=10, d=5)
    _, _, g_a, g_b = vicreg_and_grads(z_a, z_b)
    np.testing.assert_allclose(g_a, numerical_grad(lambda a: vicreg_and_grads(a, z_b)[0], z_a),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(g_b, numerical_grad(lambda b: vicreg_and_grads(z_a, b)[0], z_b),
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                     (0.0, 0.0, 1.0)])
def test_vicreg_value_terms_and_gradients_match_float64_numpy(weights):
    z_a, z_b = _views(1)
    want, want_terms, want_a, want_b = vicreg_and_grads(z_a, z_b, *weights)
    w_inv, w_var, w_cov = weights
    a, b = jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32)
    loss = functools.partial(losses.vicreg_loss, invariance_weight=w_inv,
                             variance_weight=w_var, covariance_weight=w_cov)
    value, (g_a, g_b) = jax.value_and_grad(loss, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(float(value), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_a), want_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_b), want_b, rtol=1e-4, atol=1e-6)
    terms = losses.vicreg_terms(a, b)
    for key, v in want_terms.items():
        np.testing.assert_allclose(float(terms[key]), v, rtol=1e-5, atol=1e-7)


def test_vicreg_on_eight_devices_equals_the_global_batch():
    z_a, z_b = (z.astype(np.float32) for z in _views(2, n=32, d=8))
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 8

    def per_device(a, b):
        return losses.vicreg_loss(a, b, axis_name=parallel.BATCH_AXIS)

    sharded = jax.jit(jax.shard_map(jax.value_and_grad(per_device, argnums=(0, 1)), mesh=mesh,
                                    in_specs=(jax.P("batch"), jax.P("batch")),
                                    out_specs=(jax.P(), (jax.P("batch"), jax.P("batch")))))
    value, (g_a, g_b) = sharded(z_a, z_b)
    want, _, want_a, want_b = vicreg_and_grads(z_a, z_b)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_a), want_a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_b), want_b, rtol=1e-4, atol=1e-6)


def test_vicreg_refuses_a_batch_of_one_and_unequal_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        losses.vicreg_loss(jnp.ones((1, 4)), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="same shape"):
        losses.vicreg_loss(jnp.ones((4, 4)), jnp.ones((4, 3)))


def test_every_registered_objective_returns_its_progress_and_curve_scalars():
    cfg = config_lib.base_config().loss
    z_a, z_b = (jnp.asarray(z, jnp.float32) for z in _views(3))
    assert sorted(losses.OBJECTIVES) == ["barlow_twins", "info_nce", "vicreg"]
    for name, objective in losses.OBJECTIVES.items():
        assert objective.name == name
        loss, scalars = objective.fn(z_a, z_b, cfg, None)
        assert loss.shape == () and np.isfinite(float(loss))
        keys = [k for k, _, _ in objective.progress] + [k for k, _ in objective.curves]
        assert keys and set(keys) <= set(scalars), name
    with pytest.raises(ValueError, match="registered objectives"):
        losses.get_objective("simclr")


def test_loss_kind_vicreg_is_validated_and_its_weights_checked():
    c = config_lib.base_config()
    c.loss.kind = "vicreg"
    config_lib.validate(c)
    c.loss.vicreg.variance_weight = -1.0
    with pytest.raises(config_lib.ConfigError, match="loss.vicreg"):
        config_lib.validate(c)
    c.loss.kind = "byol"
    with pytest.raises(config_lib.ConfigError, match="loss.kind must be one of"):
        config_lib.validate(c)


def test_the_progress_line_and_the_curves_show_the_objectives_own_scalars(tmp_path, capsys):
    from bt_jax import plots
    objective = losses.get_objective("vicreg")
    log = train.MetricsLog(str(tmp_path), 10, 64, progress=objective.progress)
    for step in (2, 4):
        log.write(step, {"loss": 30.5, "invariance": 0.25, "variance": 0.5,
                         "covariance": 1.125, "learning_rate": 0.1})
    log.close()
    out = capsys.readouterr().out
    assert "| loss 30.5000 | inv 0.2500 var 0.5000 cov 1.1250 | lr 0.1 |" in out
    assert "on-diag" not in out
    path = plots.plot_training_curves(str(tmp_path), objective.curves)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # Barlow Twins' line is unchanged: on-diag with 3 decimals, off-diag with 2.
    bt = train.MetricsLog(str(tmp_path / "bt"), 10, 64)
    bt.write(2, {"loss": 1.0, "on_diag": 0.5, "off_diag": 12.345})
    bt.close()
    assert "| loss 1.0000 | on-diag 0.500 off-diag 12.35 |" in capsys.readouterr().out


@pytest.mark.slow    # a whole (2-step) training run: about a minute on this 2-core CPU
def test_loss_kind_vicreg_trains_and_logs_its_terms(tmp_path, capsys):
    import json
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from test_main import _tiny
    c = _tiny(2)
    c.loss.kind = "vicreg"
    c.eval.enabled = False
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert "step      2/2" in out and " inv " in out and " cov " in out
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows and all(r["invariance"] >= 0 and 0 <= r["variance"] <= 1
                        and r["covariance"] >= 0 and "on_diag" not in r for r in rows)
    assert os.path.exists(os.path.join(workdir, "training_curves.png"))
    assert os.path.exists(os.path.join(workdir, "backbone.msgpack"))
