"""On-device (JAX) augmentations: each op against a direct computation, and the whole view
distribution against the host (tf) implementation."""
import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from bt_jax.data import augment as host
from bt_jax.data import device_augment as dev
from bt_jax.data.views import ViewConfig
from numpy_reference import gaussian_blur, torchvision_mean_crop_area

PLAIN = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
             grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def _image(seed=0, h=24, w=24):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.mark.parametrize("window,size", [((3, 5, 16, 16), 12), ((3, 5, 10, 16), 24),
                                         ((0, 0, 24, 24), 24), ((7, 1, 17, 9), 16)])
def test_resized_crop_equals_crop_then_tf_bicubic_resize(window, size):
    x = _image(1).astype(np.float32) / 255.0
    top, left, h, w = window
    want = tf.clip_by_value(tf.image.resize(x[top:top + h, left:left + w], (size, size),
                                            method="bicubic", antialias=True), 0, 1).numpy()
    got = dev.resized_crop(jnp.asarray(x), *map(float, window), size)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_crop_windows_follow_torchvision_ranges():
    keys = jax.random.split(jax.random.key(0), 2000)
    top, left, h, w = jax.vmap(lambda k: dev.crop_window(k, 100, 100, (0.08, 1.0),
                                                         (3 / 4, 4 / 3)))(keys)
    top, left, h, w = map(np.asarray, (top, left, h, w))
    assert np.all(top >= 0) and np.all(top + h <= 100) and np.all(left + w <= 100)
    assert np.mean(h * w / 1e4) == pytest.approx(torchvision_mean_crop_area(), abs=0.02)
    assert np.all(w / h > 0.7) and np.all(w / h < 1.4)


def test_colour_ops_match_direct_computations():
    x = _image(2, 6, 7).astype(np.float32) / 255.0
    hsv = np.asarray(dev.rgb_to_hsv(jnp.asarray(x)))
    want = np.array([[colorsys.rgb_to_hsv(*px) for px in row] for row in x.astype(np.float64)])
    np.testing.assert_allclose(hsv, want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dev.hsv_to_rgb(jnp.asarray(hsv))), x, atol=1e-5)
    for delta in (-0.1, 0.03, 0.25):
        np.testing.assert_allclose(np.asarray(dev.adjust_hue(jnp.asarray(x), delta)),
                                   tf.image.adjust_hue(x, delta).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dev.to_grayscale(jnp.asarray(x)))[..., 2],
                               x @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dev.solarize(jnp.asarray(x))),
                               np.where(x >= 0.5, 1 - x, x))
    np.testing.assert_allclose(np.asarray(dev.gaussian_blur(jnp.asarray(x), 0.8, 5)),
                               gaussian_blur(x, 0.8, 5), atol=1e-5)
    same = dev.color_jitter(jnp.asarray(x), jax.random.key(0), 0.0, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(np.asarray(same), x, atol=1e-5)


def test_views_depend_only_on_seed_epoch_and_index():
    images = jnp.asarray(np.stack([_image(i, 16, 16) for i in range(4)]))
    cfg = ViewConfig(16)
    f = jax.jit(lambda im, k: dev.augment_batch(im, k, cfg, cfg))
    a1, _ = f(images, dev.example_keys(0, jnp.array([2, 2, 2, 2]), jnp.array([10, 11, 12, 13])))
    # The same example at another position of another batch: the same view.
    a2, _ = f(images[::-1], dev.example_keys(0, jnp.array([2, 2, 2, 2]),
                                             jnp.array([13, 12, 11, 10])))
    np.testing.assert_array_equal(np.asarray(a1), np.asarray(a2)[::-1])
    a3, _ = f(images, dev.example_keys(0, jnp.array([3, 3, 3, 3]), jnp.array([10, 11, 12, 13])))
    assert not np.allclose(np.asarray(a1), np.asarray(a3))
    assert a1.shape == (4, 16, 16, 3) and a1.dtype == jnp.float32


def _host_views(image, cfg, n):
    img = tf.constant(image)
    ds = tf.data.Dataset.range(n).map(
        lambda i: host.augment_view(img, host.view_seed(7, 0, i), cfg)).batch(n)
    return next(iter(ds)).numpy()


def _device_views(image, cfg, n):
    keys = dev.example_keys(7, jnp.zeros(n, jnp.int32), jnp.arange(n))
    fn = jax.jit(jax.vmap(lambda im, k: dev.augment_view(im, k, cfg), in_axes=(None, 0)))
    return np.asarray(fn(jnp.asarray(image), keys))


N = 600


def _rate_close(host_rate, dev_rate, p):
    sigma = np.sqrt(p * (1 - p) / N)
    assert abs(host_rate - p) < 4 * sigma and abs(dev_rate - p) < 4 * sigma
    assert abs(host_rate - dev_rate) < 4 * np.sqrt(2) * sigma


def test_flip_grayscale_and_solarize_rates_match_host_within_binomial_error():
    image = _image(3)
    base = _device_views(image, ViewConfig(24, **PLAIN), 1)[0]
    flip = ViewConfig(24, **{**PLAIN, "flip_prob": 0.5})
    rates = [np.mean([np.allclose(v, base[:, ::-1], atol=1e-4) for v in f(image, flip, N)])
             for f in (_host_views, _device_views)]
    _rate_close(*rates, 0.5)
    gray = ViewConfig(24, **{**PLAIN, "grayscale_prob": 0.2})
    rates = [np.mean([np.allclose(v[..., 0], v[..., 1]) for v in f(image, gray, N)])
             for f in (_host_views, _device_views)]
    _rate_close(*rates, 0.2)
    bright = np.full((24, 24, 3), 230, np.uint8)
    sol = ViewConfig(24, **{**PLAIN, "solarize_prob": 0.2})
    rates = [np.mean(f(bright, sol, N).mean(axis=(1, 2, 3)) < 0.5)
             for f in (_host_views, _device_views)]
    _rate_close(*rates, 0.2)


@pytest.mark.parametrize("view", ["a", "b"])
def test_full_augmentation_output_statistics_match_host(view):
    # A colourful image with structure: smooth gradients plus a bright square.
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    image = np.stack([xx, yy, 1 - xx * yy], -1)
    image[8:20, 10:24] = [0.95, 0.9, 0.2]
    image = (image * 255).astype(np.uint8)
    cfg = ViewConfig(24, blur_sigma=(0.1, 1.5), blur_prob=1.0 if view == "a" else 0.1,
                     solarize_prob=0.0 if view == "a" else 0.2)
    h, d = _host_views(image, cfg, N), _device_views(image, cfg, N)
    for stat in (lambda v: v.mean(axis=(1, 2)), lambda v: v.std(axis=(1, 2))):
        sh, sd = stat(h), stat(d)               # [N, 3] per-view, per-channel statistics
        se = np.sqrt(sh.var(0) / N + sd.var(0) / N)
        assert np.all(np.abs(sh.mean(0) - sd.mean(0)) < 4 * se + 1e-3), (sh.mean(0), sd.mean(0))
