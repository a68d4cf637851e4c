"""barlow_twins_loss and cross_correlation against float64 NumPy references."""
import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import PartitionSpec as P

from bt_jax import parallel
from bt_jax.losses import (barlow_twins_loss, barlow_twins_terms, choose_correlation_path,
                           cross_correlation, sum_squared_correlation_gram)
from numpy_reference import bt_loss_and_grads, standardize


def _views(seed, n, d, noise=0.5):
    rng = np.random.default_rng(seed)
    z_a = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    z_b = z_a + noise * rng.normal(size=(n, d))
    return z_a, z_b


def _rel_err(x, ref):
    return np.max(np.abs(np.asarray(x, np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-12)


@pytest.mark.parametrize("n,d", [(5, 3), (16, 8), (64, 32), (32, 128)])
@pytest.mark.parametrize("redundancy", ["cross", "auto"])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
@pytest.mark.parametrize("path", ["direct", "gram"])
def test_value_and_grads_match_float64_reference(n, d, redundancy, lambd, path):
    z_a, z_b = _views(n * d, n, d)
    ref_loss, ref_ga, ref_gb = bt_loss_and_grads(z_a, z_b, lambd, redundancy)
    fn = functools.partial(barlow_twins_loss, lambd=lambd, redundancy=redundancy, path=path)
    loss, (g_a, g_b) = jax.value_and_grad(fn, argnums=(0, 1))(
        jnp.float32(z_a), jnp.float32(z_b))
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5)
    assert _rel_err(g_a, ref_ga) < 1e-4
    assert _rel_err(g_b, ref_gb) < 1e-4


def test_cross_correlation_matches_numpy():
    z_a, z_b = _views(1, 40, 6)
    a, _ = standardize(z_a)
    b, _ = standardize(z_b)
    c = cross_correlation(jnp.float32(z_a), jnp.float32(z_b))
    chex.assert_shape(c, (6, 6))
    np.testing.assert_allclose(np.asarray(c), a.T @ b / 40, atol=2e-6)


def test_terms_weight_to_the_loss_and_auto_differs_from_cross():
    z_a, z_b = map(jnp.float32, _views(2, 32, 16))
    cross = barlow_twins_terms(z_a, z_b, redundancy="cross")
    auto = barlow_twins_terms(z_a, z_b, redundancy="auto")
    np.testing.assert_allclose(barlow_twins_loss(z_a, z_b, lambd=0.3),
                               cross["on_diag"] + 0.3 * cross["off_diag"], rtol=1e-6)
    assert cross["on_diag"] == auto["on_diag"]
    a, _ = standardize(np.asarray(z_a))
    b, _ = standardize(np.asarray(z_b))
    c = a.T @ b / a.shape[0]
    off = c[~np.eye(c.shape[0], dtype=bool)]
    np.testing.assert_allclose(cross["c_diag_mean"], np.mean(np.diag(c)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cross["c_offdiag_rms"], np.sqrt(np.mean(off ** 2)), rtol=1e-5)
    assert abs(float(cross["off_diag"]) - float(auto["off_diag"])) > 1e-3


def test_zero_for_identical_decorrelated_views():
    # Columns of a Hadamard matrix (minus the constant one): mean 0, variance 1, orthogonal.
    h = np.array([[1]])
    for _ in range(3):
        h = np.block([[h, h], [h, -h]])
    z = jnp.float32(h[:, 1:])            # [8, 7]
    for redundancy in ("cross", "auto"):
        assert float(barlow_twins_loss(z, z, redundancy=redundancy, eps=0.0)) < 1e-10
        assert float(barlow_twins_loss(z, z, redundancy=redundancy)) < 1e-8
    # ... and positive as soon as the views differ.
    assert float(barlow_twins_loss(z, jnp.roll(z, 1, axis=0), eps=0.0)) > 0.1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=hnp.arrays(np.float64, 6, elements=st.floats(0.5, 4.0)),
       shift=hnp.arrays(np.float64, 6, elements=st.floats(-10.0, 10.0)),
       which=st.sampled_from(["a", "b"]))
def test_invariant_to_per_feature_affine_map(seed, scale, shift, which):
    z_a, z_b = _views(seed, 24, 6)
    base = float(barlow_twins_loss(jnp.float32(z_a), jnp.float32(z_b), lambd=0.1))
    if which == "a":
        z_a = z_a * scale + shift
    else:
        z_b = z_b * scale + shift
    moved = float(barlow_twins_loss(jnp.float32(z_a), jnp.float32(z_b), lambd=0.1))
    np.testing.assert_allclose(moved, base, rtol=1e-3, atol=1e-4)


def test_finite_gradients_with_a_constant_feature():
    z_a, z_b = _views(3, 16, 5)
    z_a[:, 2] = 7.0
    z_b[:, 4] = 0.0
    for redundancy in ("cross", "auto"):
        g_a, g_b = jax.grad(functools.partial(barlow_twins_loss, redundancy=redundancy),
                            argnums=(0, 1))(jnp.float32(z_a), jnp.float32(z_b))
        assert np.all(np.isfinite(g_a)) and np.all(np.isfinite(g_b))


def test_jit_vmap_and_bfloat16_inputs():
    z_a, z_b = _views(4, 16, 8)
    stacked_a = jnp.float32(np.stack([z_a, z_b, z_a]))
    stacked_b = jnp.float32(np.stack([z_b, z_a, z_a]))
    batched = jax.jit(jax.vmap(barlow_twins_loss))(stacked_a, stacked_b)
    chex.assert_shape(batched, (3,))
    for i in range(3):
        np.testing.assert_allclose(batched[i], barlow_twins_loss(stacked_a[i], stacked_b[i]),
                                   rtol=1e-5)
    low = barlow_twins_loss(jnp.bfloat16(z_a), jnp.bfloat16(z_b))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, bt_loss_and_grads(z_a, z_b, 0.0051)[0], rtol=5e-2)


@pytest.mark.parametrize("redundancy", ["cross", "auto"])
@pytest.mark.parametrize("path,n,d", [("direct", 64, 16), ("gram", 64, 16), ("direct", 32, 96),
                                      ("gram", 32, 96)])
def test_axis_name_gives_the_global_batch_value_and_gradients(redundancy, path, n, d):
    """On 8 devices with axis_name, loss and input gradients equal the global batch's, on
    both paths (the Gram path all-gathers the embeddings; the direct one psums C)."""
    z_a, z_b = _views(5, n, d)
    ref_loss, ref_ga, ref_gb = bt_loss_and_grads(z_a, z_b, 0.0051, redundancy)
    mesh = parallel.make_mesh()
    assert mesh.size == 8

    def per_device(a, b):
        fn = functools.partial(barlow_twins_loss, redundancy=redundancy, path=path,
                               axis_name=parallel.BATCH_AXIS)
        loss, grads = jax.value_and_grad(fn, argnums=(0, 1))(a, b)
        return loss, grads

    spec = P(parallel.BATCH_AXIS)
    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec),
                               out_specs=(P(), (spec, spec))))
    loss, (g_a, g_b) = fn(jnp.float32(z_a), jnp.float32(z_b))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-5)
    assert _rel_err(g_a, ref_ga) < 1e-4
    assert _rel_err(g_b, ref_gb) < 1e-4


def test_lambd_and_embeddings_are_checked_even_when_traced():
    """A concrete lambd < 0 (Python, NumPy or JAX) raises; a traced one cannot, so the loss is
    NaN and checkify's nan_checks stop there; a non-number lambd, complex embeddings and
    non-arrays raise TypeError; lists are arrays."""
    from jax.experimental import checkify
    rng = np.random.default_rng(0)
    z_a, z_b = (rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2))
    for bad in (-1, -1.0, np.float32(-2.0), jnp.array(-1.0)):
        with pytest.raises(ValueError, match="lambd.*must be >= 0"):
            barlow_twins_loss(z_a, z_b, lambd=bad)
    for bad in ("0.1", None, True, [0.1]):
        with pytest.raises(TypeError, match="lambd must be a real number"):
            barlow_twins_loss(z_a, z_b, lambd=bad)
    loss = jax.jit(lambda a, b, lam: barlow_twins_loss(a, b, lambd=lam))
    assert np.isnan(loss(z_a, z_b, -1.0))
    assert loss(z_a, z_b, 0.5) == pytest.approx(float(barlow_twins_loss(z_a, z_b, lambd=0.5)),
                                               rel=1e-6)
    err, _ = checkify.checkify(loss, errors=checkify.nan_checks)(z_a, z_b, -1.0)
    with pytest.raises(checkify.JaxRuntimeError, match="nan"):
        err.throw()
    err, _ = checkify.checkify(loss, errors=checkify.nan_checks)(z_a, z_b, 0.5)
    err.throw()                                             # a valid lambd: no error
    with pytest.raises(TypeError, match="real numbers; got dtype complex64.*imaginary"):
        barlow_twins_loss(z_a.astype(np.complex64), z_b.astype(np.complex64))
    with pytest.raises(TypeError, match="must be an \\[N, D\\] array"):
        barlow_twins_loss("z_a", "z_b")
    assert float(barlow_twins_loss(z_a.tolist(), z_b.tolist())) == pytest.approx(
        float(barlow_twins_loss(z_a, z_b)), rel=1e-6)


def test_bad_shapes_and_modes_raise_clear_errors():
    z = jnp.zeros((8, 4))
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(z, jnp.zeros((8, 5)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        barlow_twins_loss(jnp.zeros((8, 4, 2)), jnp.zeros((8, 4, 2)))
    with pytest.raises(ValueError, match="redundancy"):
        barlow_twins_loss(z, z, redundancy="diag")
    with pytest.raises(ValueError, match=r"lambd.*must be >= 0.*got -0.1"):
        barlow_twins_loss(z, z, lambd=-0.1)
    with pytest.raises(ValueError, match=r"at least 2 embeddings; got 1.*the loss is D"):
        barlow_twins_loss(jnp.ones((1, 4)), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match=r"at least 2 embeddings"):
        barlow_twins_terms(jnp.ones((1, 4)), jnp.ones((1, 4)))


@pytest.mark.parametrize("path", ["direct", "gram"])
@pytest.mark.parametrize("kind", ["normal", "constant", "one_constant_feature", "tiny_scale"])
def test_loss_and_gradients_pass_checkify_with_every_check(kind, path):
    from jax.experimental import checkify
    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(6, 16)).astype(np.float32)
    z_b = rng.normal(size=(6, 16)).astype(np.float32)
    if kind == "constant":
        z_a, z_b = np.ones_like(z_a), np.full_like(z_b, 3.0)
    elif kind == "one_constant_feature":
        z_a[:, 0] = 2.0
    elif kind == "tiny_scale":
        z_a, z_b = 1e-30 * z_a, 1e-30 * z_b

    def value_terms_and_grads(a, b):
        terms = barlow_twins_terms(a, b, path=path)
        value, grads = jax.value_and_grad(
            lambda a, b: barlow_twins_loss(a, b, path=path), argnums=(0, 1))(a, b)
        return value, terms, grads

    err, (value, terms, grads) = checkify.checkify(
        jax.jit(value_terms_and_grads), errors=checkify.all_checks)(z_a, z_b)
    assert err.get() is None, err.get()
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.isfinite(float(terms["c_offdiag_rms"]))
    if kind in ("constant", "tiny_scale"):   # every feature below sqrt(eps): C = 0, loss = D
        np.testing.assert_allclose(float(value), 16.0, rtol=1e-5)


def test_auto_path_takes_the_gram_matrices_only_when_they_cost_no_more():
    """Gram / direct FLOPs are 2N / D: the Gram path at 2N <= D (measured crossover at
    D = 2048 lies between N = 1024 and N = 1536)."""
    assert choose_correlation_path(256, 8192) == "gram"
    assert choose_correlation_path(1024, 2048) == "gram"
    assert choose_correlation_path(1025, 2048) == "direct"
    assert choose_correlation_path(1536, 2048) == "direct"
    assert choose_correlation_path(8192, 8192) == "direct"
    assert choose_correlation_path(4096, 128) == "direct"
    assert choose_correlation_path(4096, 128, "gram") == "gram"
    with pytest.raises(ValueError, match="path must be one of"):
        choose_correlation_path(8, 8, "fast")


@pytest.mark.parametrize("redundancy", ["cross", "auto"])
@pytest.mark.parametrize("normalization", ["batch", "feature", "none"])
def test_gram_and_direct_paths_give_the_same_terms(redundancy, normalization):
    """Every logged term, not only the loss, agrees between the two paths (float32)."""
    z_a, z_b = map(jnp.float32, _views(9, 24, 80))
    terms = {p: barlow_twins_terms(z_a, z_b, redundancy=redundancy, path=p,
                                   normalization=normalization) for p in ("direct", "gram")}
    for key in ("on_diag", "off_diag", "c_diag_mean", "c_offdiag_rms"):
        np.testing.assert_allclose(float(terms["gram"][key]), float(terms["direct"][key]),
                                   rtol=2e-5, err_msg=key)


def test_gram_sum_of_squares_matches_float64():
    a, b = (standardize(z)[0] for z in _views(3, 16, 200))
    ref = np.sum((a.T @ b / 16) ** 2)
    got = sum_squared_correlation_gram(jnp.float32(a), jnp.float32(b))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    ref_auto = np.sum((a.T @ a / 16) ** 2)
    a32 = jnp.float32(a)
    np.testing.assert_allclose(float(sum_squared_correlation_gram(a32, a32)), ref_auto,
                               rtol=1e-5)
