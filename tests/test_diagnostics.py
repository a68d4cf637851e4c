"""Collapse diagnostics against float64 NumPy and on collapsed / healthy representations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax import diagnostics


def numpy_effective_rank(x):
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return np.exp(-np.sum(p * np.log(p))), s


@pytest.mark.parametrize("shape", [(64, 16), (16, 64)])
def test_singular_values_and_effective_rank_match_float64_numpy(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) @ np.diag(np.linspace(0.1, 3, shape[1])) + 2.0
    want_rank, want_s = numpy_effective_rank(x.astype(np.float64))
    s = diagnostics.singular_values(jnp.asarray(x, jnp.float32))
    k = min(shape) - 1   # centring removes one direction when N <= D
    np.testing.assert_allclose(np.asarray(s)[:k], want_s[:k], rtol=1e-3)
    stats = diagnostics.spectrum_stats(jnp.asarray(x, jnp.float32))
    assert float(stats["effective_rank"]) == pytest.approx(want_rank, rel=1e-3)


def test_effective_rank_bounds():
    assert float(diagnostics.effective_rank(jnp.ones(8))) == pytest.approx(8.0, rel=1e-6)
    assert float(diagnostics.effective_rank(jnp.array([3.0, 0, 0]))) == pytest.approx(1.0)
    assert float(diagnostics.effective_rank(jnp.zeros(4))) == 0.0


def test_collapse_is_detected_and_a_healthy_representation_passes():
    rng = np.random.default_rng(0)
    n, d = 256, 64
    constant = np.tile(rng.normal(size=(1, d)), (n, 1)).astype(np.float32)
    rank_one = (rng.normal(size=(n, 1)) @ rng.normal(size=(1, d)) + 0.5).astype(np.float32)
    healthy = rng.normal(size=(n, d)).astype(np.float32)
    verdicts = {name: diagnostics.collapse_verdict(diagnostics.spectrum_stats(jnp.asarray(x)))
                for name, x in [("constant", constant), ("rank_one", rank_one),
                                ("healthy", healthy)]}
    assert verdicts["constant"].startswith("complete collapse"), verdicts
    assert verdicts["rank_one"].startswith("dimensional collapse"), verdicts
    assert verdicts["healthy"] is None
    stats = diagnostics.spectrum_stats(jnp.asarray(healthy))
    assert float(stats["effective_rank"]) > 0.8 * d
    assert diagnostics.scalars(stats).keys() == {"effective_rank", "top_singular_fraction",
                                                 "feature_std", "relative_spread"}


def test_heatmap_and_pngs(tmp_path):
    c = np.eye(200) * 0.9 + 0.05
    c[0, 1] = -1.0
    img = diagnostics.correlation_heatmap(c)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert tuple(img[0, 1]) == (0, 0, 255) and img[5, 5, 0] == 255 and img[5, 5, 2] < 40
    rng = np.random.default_rng(0)
    paths = diagnostics.write_pngs(str(tmp_path), spectra={"embeddings": np.sort(
        rng.random(32))[::-1]}, c=c)
    feats = rng.normal(size=(60, 8))
    paths.append(diagnostics.plot_embedding_2d(feats, rng.integers(0, 3, 60),
                                               str(tmp_path / "tsne.png"), max_points=40))
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_spectrum_stats_is_jittable_on_a_sharded_batch():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
    x = jax.device_put(np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32),
                       jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))
    got = diagnostics.spectrum_stats(x)
    want = diagnostics.spectrum_stats(np.asarray(x))
    assert float(got["effective_rank"]) == pytest.approx(float(want["effective_rank"]),
                                                         rel=1e-5)
