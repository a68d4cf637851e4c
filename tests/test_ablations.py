"""The paper's Table 2 ablations as config options: losses against float64 NumPy, the
distributed InfoNCE against one device, and the model / train-step switches."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import losses, parallel, train
from numpy_reference import (bt_loss_and_grads, bt_loss_normalized, info_nce,
                             numerical_grad, vicreg_and_grads)
from test_train import _batch, tiny_config


@pytest.mark.parametrize("normalization", ["batch", "feature", "none"])
@pytest.mark.parametrize("invariance_weight", [1.0, 0.0])
def test_normalization_ablations_match_float64_numpy(normalization, invariance_weight):
    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(12, 6)) + 0.5
    z_b = z_a + 0.4 * rng.normal(size=(12, 6))

    def loss(a, b):
        t = losses.barlow_twins_terms(a, b, normalization=normalization)
        return invariance_weight * t["on_diag"] + 0.05 * t["off_diag"]

    got = loss(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32))
    want = bt_loss_normalized(z_a, z_b, 0.05, normalization, invariance_weight)
    np.testing.assert_allclose(float(got), want, rtol=2e-5)
    g_a = jax.grad(loss)(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32))
    want_g = numerical_grad(lambda a: bt_loss_normalized(a, z_b, 0.05, normalization,
                                                         invariance_weight), z_a)
    np.testing.assert_allclose(np.asarray(g_a), want_g, rtol=2e-3,
                               atol=2e-4 * np.abs(want_g).max())


def test_info_nce_matches_float64_numpy_value_and_gradient():
    rng = np.random.default_rng(1)
    z_a = rng.normal(size=(10, 5))
    z_b = z_a + 0.5 * rng.normal(size=(10, 5))
    got = losses.info_nce_loss(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32),
                               temperature=0.2)
    np.testing.assert_allclose(float(got), info_nce(z_a, z_b, 0.2), rtol=1e-5)
    g = jax.grad(lambda a: losses.info_nce_loss(a, jnp.asarray(z_b, jnp.float32),
                                                temperature=0.2))(jnp.asarray(z_a, jnp.float32))
    want = numerical_grad(lambda a: info_nce(a, z_b, 0.2), z_a)
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-3, atol=1e-5)


def test_info_nce_on_eight_devices_equals_the_global_batch():
    rng = np.random.default_rng(2)
    z_a = rng.normal(size=(32, 8)).astype(np.float32)
    z_b = (z_a + 0.3 * rng.normal(size=(32, 8))).astype(np.float32)
    mesh = parallel.make_mesh()

    def per_device(a, b):
        return losses.info_nce_loss(a, b, temperature=0.1, axis_name=parallel.BATCH_AXIS)

    sharded = jax.jit(jax.shard_map(jax.value_and_grad(per_device, argnums=(0, 1)), mesh=mesh,
                                    in_specs=(jax.P("batch"), jax.P("batch")),
                                    out_specs=(jax.P(), (jax.P("batch"), jax.P("batch")))))
    value, (g_a, g_b) = sharded(z_a, z_b)
    want_value, (want_a, want_b) = jax.value_and_grad(
        functools.partial(losses.info_nce_loss, temperature=0.1), argnums=(0, 1))(z_a, z_b)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_a), np.asarray(want_a), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_b), np.asarray(want_b), rtol=1e-4, atol=1e-7)


@pytest.mark.slow    # about a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_model_switches_change_the_parameters():
    c = tiny_config()
    c.model.projector_bn = False
    c.model.predictor_dims = (16, 16)
    v = train.init_variables(train.create_model(c.model), jax.random.key(0), 8)
    assert not any(k.startswith("bn") for k in v["params"]["projector"])
    assert set(v["params"]["predictor"]) == {"linear0", "linear1"}
    out = train.create_model(c.model).apply(v, jnp.zeros((4, 8, 8, 3)), train=False)
    assert out["prediction"].shape == (4, 16)
    assert "prediction" not in train.create_model(c.model).apply(v, jnp.zeros((4, 8, 8, 3)),
                                                           train=False, predict=False)


@pytest.mark.slow    # nine compiles of a tiny step (about 2 min on 2 cores); `make test-slow`
@pytest.mark.parametrize("ablation", [
    {"loss.invariance_weight": 0.0}, {"loss.lambd": 0.0}, {"loss.normalization": "feature"},
    {"model.projector_bn": False, "loss.normalization": "none"},
    {"loss.kind": "info_nce"}, {"loss.kind": "vicreg"}, {"loss.stop_gradient": True},
    {"model.predictor_dims": (16, 16)}, {"loss.redundancy": "auto"}])
def test_every_ablation_trains_one_step_with_the_loss_it_names(ablation):
    c = tiny_config()
    for key, value in ablation.items():
        section, field = key.split(".")
        c[section][field] = value
    model = train.create_model(c.model)
    v = train.init_variables(model, jax.random.key(0), 8)
    batch = jax.tree.map(jnp.asarray, _batch(c))
    loss, grads, _, terms, _ = train.loss_and_grads(v["params"], v["batch_stats"], batch,
                                                    model=model, loss_cfg=c.loss,
                                                    axis_name=None)
    out_a = model.apply(v, batch["view_a"], train=True, mutable=["batch_stats"])[0]
    out_b = model.apply(v, batch["view_b"], train=True, predict=False,
                        mutable=["batch_stats"])[0]
    # The loss the ablation names, in float64 NumPy on the network's own embeddings.
    z_a = np.asarray(out_a.get("prediction", out_a["embedding"]), np.float64)
    z_b = np.asarray(out_b["embedding"], np.float64)
    if c.loss.kind == "info_nce":
        want = info_nce(z_a, z_b, c.loss.info_nce.temperature)
    elif c.loss.kind == "vicreg":
        w = c.loss.vicreg
        want, want_terms, _, _ = vicreg_and_grads(z_a, z_b, w.invariance_weight,
                                                  w.variance_weight, w.covariance_weight)
        for name, value in want_terms.items():
            np.testing.assert_allclose(float(terms[name]), value, rtol=1e-4)
    elif c.loss.redundancy == "auto":
        want = bt_loss_and_grads(z_a, z_b, c.loss.lambd, redundancy="auto")[0]
    else:
        want = bt_loss_normalized(z_a, z_b, c.loss.lambd, c.loss.normalization,
                                  c.loss.invariance_weight)
    np.testing.assert_allclose(float(loss), c.loss.scale * want, rtol=1e-4)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    if "model.predictor_dims" in ablation:
        assert float(jnp.abs(grads["predictor"]["linear0"]["kernel"]).max()) > 0


def test_stop_gradient_drops_view_b_gradient():
    """With view B's embedding a constant, the gradient equals that of a loss in which
    view B's embedding was computed outside the differentiated function."""
    c = tiny_config()
    c.loss.stop_gradient = True
    model = train.create_model(c.model)
    v = train.init_variables(model, jax.random.key(0), 8)
    batch = jax.tree.map(jnp.asarray, _batch(c))
    _, grads, _, _, _ = train.loss_and_grads(v["params"], v["batch_stats"], batch, model=model,
                                             loss_cfg=c.loss, axis_name=None)
    _, mut = model.apply(v, batch["view_a"], train=True, mutable=["batch_stats"])
    z_b = model.apply({"params": v["params"], "batch_stats": mut["batch_stats"]},
                      batch["view_b"], train=True, mutable=["batch_stats"])[0]["embedding"]

    def loss_a(p):
        z_a = model.apply({"params": p, "batch_stats": v["batch_stats"]}, batch["view_a"],
                          train=True, mutable=["batch_stats"])[0]["embedding"]
        t = losses.barlow_twins_terms(z_a, z_b)
        return c.loss.scale * (t["on_diag"] + c.loss.lambd * t["off_diag"])

    want = jax.grad(loss_a)(v["params"])
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                                   atol=1e-6 * max(float(np.abs(w).max()), 1e-30))
