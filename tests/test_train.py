"""The data-parallel train step: 8 CPU devices against one device on the same global batch."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import config as config_lib
from bt_jax import parallel, train


def tiny_config():
    c = config_lib.base_config()
    c.batch_size = 16
    c.data.image_size = 8
    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 0.0625            # 4 channels in the first stage
    c.model.projector_dims = (32, 32, 16)
    c.model.zero_init_residual = False  # else residual branches start with zero gradients
    c.loss.lambd = 0.05
    c.loss.scale = 0.5
    c.optim.warmup_epochs = 0
    return c


def _batch(c, seed=0):
    rng = np.random.default_rng(seed)
    shape = (c.batch_size, c.data.image_size, c.data.image_size, 3)
    x = rng.normal(size=shape).astype(np.float32)
    return {"view_a": x, "view_b": (x + 0.3 * rng.normal(size=shape)).astype(np.float32)}


def _sharded_loss_and_grads(c, variables, batch, mesh):
    model = train.create_model(c.model, axis_name=parallel.BATCH_AXIS)

    def fn(params, batch_stats, batch):
        return train.loss_and_grads(params, batch_stats, batch, model=model, loss_cfg=c.loss,
                                    axis_name=parallel.BATCH_AXIS)[:4]   # features: per device

    fn = parallel.data_parallel(fn, mesh, num_replicated_args=2)
    return fn(parallel.replicate(variables["params"], mesh),
              parallel.replicate(variables["batch_stats"], mesh),
              parallel.host_to_global(batch, mesh))


def _max_leaf_rel_err(tree, ref):
    errs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y))) /
                           max(float(np.max(np.abs(np.asarray(y)))), 1e-30)), tree, ref)
    return max(jax.tree.leaves(errs)), errs


@pytest.mark.slow   # ~30-45 s on a 2-core CPU: flax's init compiled with default options
def test_init_variables_is_the_models_own_init_in_one_fast_program():
    """The same values as flax's model.init (compiled with XLA's default options), from one
    program; and still traceable inside a user's eval_shape."""
    c = tiny_config()
    model = train.create_model(c.model)
    got = train.init_variables(model, jax.random.key(3), c.data.image_size)
    x = jnp.zeros((2, c.data.image_size, c.data.image_size, 3))
    want = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(3))
    assert set(got) == {"params", "batch_stats"}
    chex.assert_trees_all_close(got["params"], want["params"], rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(got["batch_stats"], want["batch_stats"])
    other = train.init_variables(model, jax.random.key(4), c.data.image_size)
    kernel = lambda v: v["params"]["projector"]["linear0"]["kernel"]
    assert not np.allclose(kernel(other), kernel(got))
    shapes = jax.eval_shape(lambda: train.init_variables(model, jax.random.key(0),
                                                         c.data.image_size))
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, got)


def test_eight_devices_equal_one_device_loss_and_every_gradient():
    """Cross-replica BN and the psum'd loss give the single-device global-batch gradient."""
    c = tiny_config()
    variables = train.init_variables(train.create_model(c.model), jax.random.key(0), 8)
    batch = _batch(c)
    mesh8 = parallel.make_mesh()
    mesh1 = parallel.make_mesh(jax.devices()[:1])
    assert mesh8.size == 8
    loss8, grads8, stats8, terms8 = _sharded_loss_and_grads(c, variables, batch, mesh8)
    loss1, grads1, stats1, terms1 = _sharded_loss_and_grads(c, variables, batch, mesh1)
    # The same global batch without shard_map at all, as a user would run it on one device.
    loss0, grads0, stats0, _, _ = train.loss_and_grads(
        variables["params"], variables["batch_stats"], jax.tree.map(jnp.asarray, batch),
        model=train.create_model(c.model), loss_cfg=c.loss, axis_name=None)

    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    np.testing.assert_allclose(float(terms8["off_diag"]), float(terms1["off_diag"]), rtol=1e-4)
    chex.assert_trees_all_equal_shapes(grads8, variables["params"])
    worst, errs = _max_leaf_rel_err(grads8, grads1)
    assert worst < 1e-4, errs
    worst0, errs0 = _max_leaf_rel_err(grads1, grads0)
    assert worst0 < 1e-4, errs0
    worst_stats, _ = _max_leaf_rel_err(stats8, stats1)
    assert worst_stats < 1e-4
    # Non-trivial: every gradient leaf carries signal (none silently zero).
    assert all(float(np.max(np.abs(g))) > 0 for g in jax.tree.leaves(grads1))


@pytest.mark.slow   # ~40 s on a 2-core CPU
def test_full_train_steps_agree_between_eight_and_one_device():
    c = tiny_config()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=4, total_steps=4)
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = parallel.make_mesh(devices)
        state = parallel.replicate(
            train.init_state(train.create_model(c.model), tx, jax.random.key(0), 8), mesh)
        step = train.make_train_step(train.create_model(c.model, parallel.BATCH_AXIS), tx,
                                     c.loss, mesh)
        losses = []
        for i in range(3):
            state, metrics = step(state, parallel.host_to_global(_batch(c, seed=i), mesh))
            losses.append(float(metrics["loss"]))
        results.append((jax.device_get(state), losses))
    (s8, l8), (s1, l1) = results
    np.testing.assert_allclose(l8, l1, rtol=1e-4)
    assert int(s8.step) == 3
    worst, errs = _max_leaf_rel_err(s8.params, s1.params)
    assert worst < 1e-3, errs


@pytest.mark.slow   # ~40 s on a 2-core CPU
def test_training_lowers_the_loss_on_a_fixed_batch():
    c = tiny_config()
    c.optim.lr_weights = 2.0
    c.optim.eta = 0.02
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=30, total_steps=30)
    mesh = parallel.make_mesh()
    state = parallel.replicate(train.init_state(train.create_model(c.model), tx,
                                                jax.random.key(1), 8), mesh)
    step = train.make_train_step(train.create_model(c.model, parallel.BATCH_AXIS), tx, c.loss,
                                 mesh)
    batch = parallel.host_to_global(_batch(c), mesh)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_batch_size_not_divisible_by_devices_is_a_clear_error():
    mesh = parallel.make_mesh()
    with pytest.raises(config_lib.ConfigError,
                       match=r"not divisible by the 8 devices.*multiple of 8"):
        parallel.per_device_batch_size(100, mesh)
    assert parallel.per_device_batch_size(96, mesh) == 12


def test_host_to_global_shards_along_the_batch():
    mesh = parallel.make_mesh()
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.host_to_global({"x": x}, mesh)["x"]
    assert g.shape == (16, 3)
    assert len(g.addressable_shards) == 8
    assert g.addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(g), x)


def test_train_step_refuses_a_model_without_the_batch_axis():
    c = tiny_config()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="axis_name='batch'"):
        train.make_train_step(train.create_model(c.model), tx, c.loss, parallel.make_mesh())


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_on_device_augmentation_inside_the_step_is_independent_of_the_device_count():
    from bt_jax.data import device_augment
    from bt_jax.data.views import ViewConfig
    c = tiny_config()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=4, total_steps=4)
    cfg = ViewConfig(8, blur_sigma=(0.1, 1.0))
    make_views = device_augment.make_view_fn(0, cfg, cfg, [0.5] * 3, [0.25] * 3)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 12, 12, 1), np.uint8),
             "index": np.arange(16, dtype=np.int32), "epoch": np.full(16, 3, np.int32)}
    losses = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = parallel.make_mesh(devices)
        state = parallel.replicate(
            train.init_state(train.create_model(c.model), tx, jax.random.key(0), 8), mesh)
        step = train.make_train_step(train.create_model(c.model, parallel.BATCH_AXIS), tx, c.loss,
                                     mesh, make_views=make_views)
        _, metrics = step(state, parallel.host_to_global(batch, mesh))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.slow    # two compiled train steps: about a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_views_as_their_own_program_equal_views_inside_the_step():
    """The trainer's default: the on-device augmentation is a separate jit(shard_map) before
    the step. Its views equal make_views on the whole batch on one device, labels still
    reach the online probe, and the update equals the one-program step's (views made
    inside the step, as experiments/benchmark.py composes it)."""
    from bt_jax.data import device_augment
    from bt_jax.data.views import ViewConfig
    c = tiny_config()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=4, total_steps=4)
    probe_tx = train.online_probe_optimizer(c.monitor)
    make_views = device_augment.make_view_fn(0, ViewConfig(8), ViewConfig(8, solarize_prob=0.5),
                                             [0.5] * 3, [0.25] * 3)
    rng = np.random.default_rng(1)
    batch = {"image": rng.integers(0, 256, (16, 10, 10, 1), np.uint8),
             "index": np.arange(16, dtype=np.int32), "epoch": np.full(16, 2, np.int32),
             "label": np.arange(16, dtype=np.int32) % 3}
    mesh = parallel.make_mesh()
    model = train.create_model(c.model, parallel.BATCH_AXIS)
    init = jax.device_get(train.init_state(train.create_model(c.model), tx, jax.random.key(0), 8,
                                           num_classes=3, probe_tx=probe_tx))  # donated: copy
    separate = train.make_train_step(model, tx, c.loss, mesh, make_views=make_views,
                                     probe_tx=probe_tx)
    body = train.train_step_body(model, tx, c.loss, probe_tx=probe_tx)
    fused = parallel.data_parallel(
        lambda state, b: body(state, train.update_inputs(make_views(b), b)), mesh,
        num_replicated_args=1, donate_state=True)
    global_batch = parallel.host_to_global(batch, mesh)
    views = jax.device_get(parallel.sharded_map(make_views, mesh)(global_batch))
    direct = jax.device_get(make_views(jax.tree.map(jnp.asarray, batch)))
    for key in ("view_a", "view_b"):
        np.testing.assert_allclose(views[key], direct[key], atol=1e-5)  # float rounding
    out = {}
    for name, step in (("separate", separate), ("fused", fused)):
        new, metrics = step(parallel.replicate(init, mesh), global_batch)
        out[name] = jax.device_get((new, metrics))
    (s_sep, m_sep), (s_fused, m_fused) = out["separate"], out["fused"]
    assert "probe_top1" in m_sep
    for key in ("loss", "probe_loss", "probe_top1"):
        np.testing.assert_allclose(m_sep[key], m_fused[key], rtol=1e-5)
    worst, errs = _max_leaf_rel_err((s_sep.params, s_sep.probe["params"]),
                                    (s_fused.params, s_fused.probe["params"]))
    assert worst < 1e-4, errs


@pytest.mark.slow    # about a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_bfloat16_computes_the_network_in_bf16_and_keeps_float32_state():
    """model.dtype="bfloat16": convolutions and dense layers in bf16; parameters, optimiser
    state, BatchNorm statistics, the cross-correlation and the loss in float32."""
    c = tiny_config()
    c.model.dtype = "bfloat16"
    mesh = parallel.make_mesh()
    model = train.create_model(c.model, axis_name=parallel.BATCH_AXIS)
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=10, total_steps=10)
    state = parallel.replicate(train.init_state(train.create_model(c.model), tx, jax.random.key(0),
                                                c.data.image_size), mesh)
    step = train.make_train_step(model, tx, c.loss, mesh)
    state, metrics = step(state, parallel.host_to_global(_batch(c), mesh))
    for tree in (state.params, state.batch_stats, state.opt_state):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)
                if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in metrics.values())
    variables = train.init_variables(train.create_model(c.model), jax.random.key(0), 8)
    jaxpr = jax.make_jaxpr(lambda p, s, b: train.loss_and_grads(
        p, s, b, model=train.create_model(c.model), loss_cfg=c.loss, axis_name=None))(
        variables["params"], variables["batch_stats"], _batch(c))
    matmuls = ("conv_general_dilated", "dot_general")
    eqns = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in matmuls]
    dtypes = [tuple(v.aval.dtype for v in e.invars) for e in eqns]
    assert sum(d == (jnp.bfloat16, jnp.bfloat16) for d in dtypes) >= 10   # the network
    assert (jnp.float32, jnp.float32) in dtypes   # the cross-correlation Z_A^T Z_B / N
    assert jaxpr.out_avals[0].dtype == jnp.float32


@pytest.mark.slow    # a whole training run: over a minute on this 2-core CPU; `make test-slow` (and CI) runs it
def test_online_probe_matches_one_device_and_never_reaches_the_backbone():
    """The probe's update on 8 devices equals the global-batch update computed directly;
    unlabelled examples (-1) are ignored; the backbone's update is the same with or
    without the probe (labels reach only the classifier)."""
    c = tiny_config()
    tx = train.create_optimizer(c.optim, c.batch_size, steps_per_epoch=4, total_steps=4)
    probe_tx = train.online_probe_optimizer(c.monitor)
    batch = _batch(c)
    labels = np.arange(c.batch_size, dtype=np.int32) % 3
    labels[::4] = -1
    model = train.create_model(c.model)
    mesh = parallel.make_mesh()
    outcomes = {}
    for with_probe in (True, False):
        state = train.init_state(model, tx, jax.random.key(0), 8,
                                 num_classes=3 if with_probe else 0, probe_tx=probe_tx)
        assert (state.probe is None) != with_probe
        step = train.make_train_step(train.create_model(c.model, parallel.BATCH_AXIS), tx, c.loss,
                                     mesh, probe_tx=probe_tx)
        new, metrics = step(parallel.replicate(state, mesh),
                            parallel.host_to_global({**batch, "label": labels}, mesh))
        outcomes[with_probe] = (jax.device_get(new), jax.device_get(metrics))
    (s_probe, m_probe), (s_plain, m_plain) = outcomes[True], outcomes[False]
    assert "probe_top1" in m_probe and "probe_top1" not in m_plain
    worst, errs = _max_leaf_rel_err(s_probe.params, s_plain.params)
    assert worst == 0.0, errs
    # Direct: the global batch on one device, no shard_map.
    init = train.init_state(model, tx, jax.random.key(0), 8, num_classes=3, probe_tx=probe_tx)
    features = train.loss_and_grads(init.params, init.batch_stats,
                                    jax.tree.map(jnp.asarray, batch), model=model,
                                    loss_cfg=c.loss, axis_name=None)[4]
    want, want_metrics = train.online_probe_step(init.probe, probe_tx, features,
                                                 jnp.asarray(labels), None)
    worst, errs = _max_leaf_rel_err(s_probe.probe["params"], want["params"])
    assert worst < 1e-4, errs
    np.testing.assert_allclose(m_probe["probe_loss"], want_metrics["probe_loss"], rtol=1e-5)
    # The loss over labelled examples only, against float64 NumPy (zero init: uniform logits).
    assert float(want_metrics["probe_loss"]) == pytest.approx(np.log(3), rel=1e-6)
    f = np.asarray(features, np.float64)[labels >= 0]
    onehot = np.eye(3)[labels[labels >= 0]]
    grad_w = f.T @ (np.full_like(onehot, 1 / 3) - onehot) / len(f)
    # Adam's first step moves each weight by -lr * sign(grad).
    np.testing.assert_allclose(np.asarray(want["params"]["w"]),
                               -c.monitor.online_probe_lr * np.sign(grad_w), atol=1e-6)
