"""LARS and the schedules against NumPy re-derivations of the paper's rule."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bt_jax.optim import lars, scale_lr_by_batch, warmup_cosine_schedule


def numpy_lars(params, grads_seq, w_lr, b_lr, wd, momentum, eta, clip=False, decayed=None,
               trusted=None):
    """The contract's rule in float64; w_lr/b_lr are functions of the step; clip: solo-learn's
    clip_lr (trust ratio r -> min(r / lr, 1)); decayed / trusted: the names of the leaves
    with weight decay / with the trust ratio and w_lr (None: those with ndim > 1)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    decayed = {k for k in p if p[k].ndim > 1} if decayed is None else set(decayed)
    trusted = {k for k in p if p[k].ndim > 1} if trusted is None else set(trusted)
    for step, grads in enumerate(grads_seq):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            d = g + wd * p[k] if k in decayed else g
            if k in trusted:
                pn, dn = np.linalg.norm(p[k]), np.linalg.norm(d)
                r = eta * pn / dn if pn > 0 and dn > 0 else 1.0
                lr = w_lr(step)
                if clip:
                    r = min(r / lr, 1.0) if lr > 0 else 1.0
                d = d * r
            else:
                lr = b_lr(step)
            mu[k] = momentum * mu[k] + d
            p[k] = p[k] - lr * mu[k]
    return p


def _problem(seed):
    rng = np.random.default_rng(seed)
    params = {
        "conv": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
        "dense": rng.normal(size=(8, 5)).astype(np.float32),
        "zero_weight": np.zeros((4, 3), np.float32),          # |p| = 0: trust ratio 1
        "bias": rng.normal(size=(5,)).astype(np.float32),
        "bn_scale": np.ones((8,), np.float32),
    }
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
             for _ in range(5)]
    grads[2]["dense"][:] = 0.0  # |d| = wd|p| only
    return params, grads


def _run(tx, params, grads_seq):
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads_seq:
        updates, state = jax.jit(tx.update)(g, state, p)
        p = optax.apply_updates(p, updates)
    return p


@pytest.mark.parametrize("num_steps", [1, 5])
def test_lars_matches_numpy_rule(num_steps):
    params, grads = _problem(num_steps)
    kw = dict(weight_decay=1e-2, momentum=0.9, eta=0.02)
    got = _run(lars(0.5, 0.01, **kw), params, grads[:num_steps])
    want = numpy_lars(params, grads[:num_steps], lambda s: 0.5, lambda s: 0.01, 1e-2, 0.9, 0.02)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_biases_and_batchnorm_skip_decay_and_trust_ratio():
    params, grads = _problem(0)
    got = _run(lars(0.5, 0.01, weight_decay=0.1, eta=1e-3), params, grads[:1])
    # One step from mu = 0: ndim <= 1 leaves move by exactly -bias_lr * g.
    for k in ("bias", "bn_scale"):
        np.testing.assert_allclose(np.asarray(got[k]), params[k] - 0.01 * grads[0][k], rtol=1e-6)
    # Weights move by lr * eta * |p| along the normalised (g + wd p): a step of known norm.
    step = np.asarray(got["dense"]) - params["dense"]
    np.testing.assert_allclose(np.linalg.norm(step), 0.5 * 1e-3 * np.linalg.norm(params["dense"]),
                               rtol=2e-4)  # float32 rounding of (p + step) - p


@pytest.mark.parametrize("as_function", [False, True])
def test_lars_masks_choose_decay_and_trust_ratio_per_leaf(as_function):
    params, grads = _problem(4)
    # Decay on the conv and on a bias; the trust ratio (and the weight rate) on the conv
    # and the BN scale; the dense weight gets neither, as a bias would.
    decayed, trusted = {"conv", "bias"}, {"conv", "bn_scale"}
    wd_mask = {k: k in decayed for k in params}
    tr_mask = {k: k in trusted for k in params}
    if as_function:
        wd_mask, tr_mask = (lambda p, m=wd_mask: m), (lambda p, m=tr_mask: m)
    got = _run(lars(0.5, 0.01, weight_decay=1e-2, eta=0.02, weight_decay_mask=wd_mask,
                    trust_ratio_mask=tr_mask), params, grads)
    want = numpy_lars(params, grads, lambda s: 0.5, lambda s: 0.01, 1e-2, 0.9, 0.02,
                      decayed=decayed, trusted=trusted)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    default = _run(lars(0.5, 0.01, weight_decay=1e-2, eta=0.02), params, grads)
    assert not np.allclose(np.asarray(default["dense"]), want["dense"])   # the masks matter
    # Masks of the ndim rule give the default exactly.
    rule = {k: v.ndim > 1 for k, v in params.items()}
    same = _run(lars(0.5, 0.01, weight_decay=1e-2, eta=0.02, weight_decay_mask=rule,
                     trust_ratio_mask=rule), params, grads)
    for k in params:
        np.testing.assert_array_equal(np.asarray(same[k]), np.asarray(default[k]))


def test_lars_mask_of_another_structure_is_a_clear_error():
    params, grads = _problem(0)
    tx = lars(0.1, 0.1, weight_decay_mask={"conv": True})
    with pytest.raises(ValueError, match="weight_decay_mask must be a pytree of bools"):
        tx.update(grads[0], tx.init(params), params)


def test_lars_with_schedules_and_requires_params():
    params, grads = _problem(7)
    w = warmup_cosine_schedule(1.0, 5, 2)
    b = warmup_cosine_schedule(0.1, 5, 2)
    got = _run(lars(w, b, weight_decay=1e-3, eta=0.01), params, grads)
    want = numpy_lars(params, grads, lambda s: float(w(s)), lambda s: float(b(s)), 1e-3, 0.9, 0.01)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    tx = lars(0.1, 0.1)
    with pytest.raises(ValueError, match="parameters"):
        tx.update(grads[0], tx.init(params))


def test_warmup_cosine_schedule_matches_official_formula():
    peak, total, warm = 0.8, 100, 10
    sched = warmup_cosine_schedule(peak, total, warm)
    for s in [0, 1, 5, 9, 10, 11, 50, 99, 100]:
        if s < warm:
            want = peak * s / warm
        else:
            q = 0.5 * (1 + np.cos(np.pi * (s - warm) / (total - warm)))
            want = peak * q + peak * 1e-3 * (1 - q)
        np.testing.assert_allclose(float(sched(s)), want, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(float(sched(total)), peak / 1000, rtol=1e-4)
    assert scale_lr_by_batch(0.2, 2048) == pytest.approx(1.6)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(0.1, 10, 11)


def test_lars_trust_ratio_clipping_matches_numpy():
    params, grads = _problem(3)
    w = warmup_cosine_schedule(2.0, total_steps=5, warmup_steps=2)
    got = _run(lars(w, 0.05, weight_decay=1e-4, eta=0.02, clip_trust_ratio=True), params, grads)
    want = numpy_lars(params, grads, lambda s: float(w(s)), lambda s: 0.05, 1e-4, 0.9, 0.02,
                      clip=True)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
    unclipped = _run(lars(w, 0.05, weight_decay=1e-4, eta=0.02), params, grads)
    assert not np.allclose(unclipped["conv"], got["conv"])   # the clip binds here
