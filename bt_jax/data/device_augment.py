"""The Barlow Twins view augmentations as pure JAX functions, run on the accelerator.

The same ops, strengths and probabilities as `bt_jax.data.augment` (tf, on the host), in the
style of DeepMind BYOL's augmentations: each function maps one image and one PRNG key to one
view, and `augment_batch` vmaps it with per-example keys. A view is a function of
(seed, epoch, example index) through `example_keys`. Two implementations cannot share random
streams, so host and device views of one example differ; their distributions match (tested).

No TensorFlow here: this module runs on a GPU box without it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.data.layout import CROPS, IMAGE, VIEWS
from bt_jax.data.views import ViewConfig, gaussian_kernel_size

# A NumPy constant: a jnp array here would start JAX's backend on import, before a
# multi-process run's jax.distributed.initialize.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def example_keys(seed: int, epoch: jax.Array, index: jax.Array) -> jax.Array:
    """[B] PRNG keys, key i a function of (seed, epoch[i], index[i]) alone."""
    base = jax.random.fold_in(jax.random.key(seed), 0x5EED)
    return jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(base, e), i))(
        epoch.astype(jnp.uint32), index.astype(jnp.uint32))


def crop_window(key, height: int, width: int, scale, ratio, attempts: int = 10):
    """torchvision's RandomResizedCrop.get_params: (top, left, crop_h, crop_w) float scalars.

    Up to `attempts` draws of area ~ U(scale) * H * W and log aspect ~ U(log ratio); the
    first that fits wins; otherwise the largest centred crop within the ratio range.
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    h, w = float(height), float(width)
    area = h * w * jax.random.uniform(k_area, (attempts,), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (attempts,), minval=jnp.log(ratio[0]),
                                        maxval=jnp.log(ratio[1])))
    cw = jnp.round(jnp.sqrt(area * aspect))
    ch = jnp.round(jnp.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = jnp.argmax(fits)
    in_ratio = w / h
    fb_w = round(h * ratio[1]) if in_ratio > ratio[1] else w
    fb_h = round(w / ratio[0]) if in_ratio < ratio[0] else h
    any_fit = jnp.any(fits)
    crop_h = jnp.where(any_fit, ch[first], fb_h)
    crop_w = jnp.where(any_fit, cw[first], fb_w)
    top = jnp.where(any_fit, jnp.floor(jax.random.uniform(k_top) * (h - crop_h + 1)),
                    jnp.floor((h - crop_h) / 2))
    left = jnp.where(any_fit, jnp.floor(jax.random.uniform(k_left) * (w - crop_w + 1)),
                     jnp.floor((w - crop_w) / 2))
    return top, left, crop_h, crop_w


def _keys_cubic(x, a: float = -0.5):
    """Keys' cubic convolution kernel (a = -0.5, as TensorFlow's and PIL's bicubic)."""
    x = jnp.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return jnp.where(x <= 1, near, jnp.where(x < 2, far, 0.0))


def _resize_matrix(start, length, in_size: int, out_size: int):
    """[out_size, in_size] antialiased bicubic weights resizing the window
    [start, start + length) to out_size pixels; pixels outside the window get weight 0, as
    if the window had been cropped out first (half-pixel centres, rows normalised)."""
    scale = out_size / length
    kernel_scale = jnp.maximum(1.0 / scale, 1.0)        # antialias when shrinking
    centre = start + (jnp.arange(out_size) + 0.5) / scale - 0.5           # [out]
    j = jnp.arange(in_size, dtype=jnp.float32)                             # [in]
    w = _keys_cubic((j[None, :] - centre[:, None]) / kernel_scale)
    w = jnp.where((j[None, :] >= start) & (j[None, :] < start + length), w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def resized_crop(image, top, left, crop_h, crop_w, size: int):
    """[H, W, C] in [0, 1] -> [size, size, C]: the window, resized bicubically (antialiased).

    Computed as two static-shape matrix products, so the window may be traced values;
    matches cropping then tf.image.resize(method="bicubic", antialias=True).
    """
    rows = _resize_matrix(top, crop_h, image.shape[0], size)
    cols = _resize_matrix(left, crop_w, image.shape[1], size)
    out = jnp.einsum("sh,hwc,tw->stc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.clip(out, 0.0, 1.0)


def to_grayscale(image):
    """[H, W, 3] -> [H, W, 3] luma (ITU-R 601-2), repeated."""
    return jnp.repeat((image @ LUMA)[..., None], 3, axis=-1)


def _blend(image, other, factor):
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def rgb_to_hsv(rgb):
    """[..., 3] RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    c = v - jnp.min(rgb, axis=-1)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    safe_c = jnp.where(c > 0, c, 1.0)
    h = jnp.where(v == r, (g - b) / safe_c, jnp.where(v == g, 2.0 + (b - r) / safe_c,
                                                      4.0 + (r - g) / safe_c))
    h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv):
    """[..., 3] HSV (hue in [0, 1)) -> RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (jnp.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0, 1)


def adjust_hue(image, delta):
    """Rotates the hue of [H, W, 3] by delta (in turns, as tf.image.adjust_hue)."""
    hsv = rgb_to_hsv(image)
    return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0))


def color_jitter(image, key, brightness: float, contrast: float, saturation: float,
                 hue: float):
    """torchvision's ColorJitter on [H, W, 3] in [0, 1]: the four ops in random order."""
    k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

    def u(k, lo, hi):
        return jax.random.uniform(k, minval=lo, maxval=hi)

    fb = u(k_b, max(0.0, 1 - brightness), 1 + brightness)
    fc = u(k_c, max(0.0, 1 - contrast), 1 + contrast)
    fs = u(k_s, max(0.0, 1 - saturation), 1 + saturation)
    fh = u(k_h, -hue, hue)
    ops = (
        lambda x: jnp.clip(x * fb, 0.0, 1.0),
        lambda x: _blend(x, jnp.mean(to_grayscale(x)), fc),
        lambda x: _blend(x, to_grayscale(x), fs),
        lambda x: adjust_hue(x, fh),
    )
    order = jnp.argsort(jax.random.uniform(k_perm, (4,)))
    for i in range(4):
        image = jax.lax.switch(order[i], ops, image)
    return image


def gaussian_blur(image, sigma, kernel_size: int):
    """Separable Gaussian blur of [H, W, C] with reflect padding; sigma a scalar."""
    r = kernel_size // 2
    x = jnp.arange(-r, r + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * jnp.square(x / sigma))
    k = k / jnp.sum(k)
    h, w = image.shape[:2]
    padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(k[i] * padded[i:i + h] for i in range(kernel_size))
    return sum(k[j] * rows[:, j:j + w] for j in range(kernel_size))


def solarize(image, threshold: float = 0.5):
    """x >= threshold becomes 1 - x (PIL's ImageOps.solarize(128) on [0, 1])."""
    return jnp.where(image >= threshold, 1.0 - image, image)


def photometric(x, keys, cfg: ViewConfig):
    """Flip, colour jitter, grayscale, blur and solarize of a crop [S, S, 3] in [0, 1].

    keys: the view's 8 keys from `jax.random.split(key, 8)`; keys[0] (the crop's) is unused.
    """
    def maybe(prob, k, fn, x):
        if prob <= 0.0:
            return x
        if prob >= 1.0:
            return fn(x)
        return jnp.where(jax.random.uniform(k) < prob, fn(x), x)

    x = maybe(cfg.flip_prob, keys[1], lambda v: v[:, ::-1], x)
    x = maybe(cfg.jitter_prob, keys[2],
              lambda v: color_jitter(v, keys[3], cfg.brightness, cfg.contrast, cfg.saturation,
                                     cfg.hue), x)
    x = maybe(cfg.grayscale_prob, keys[4], to_grayscale, x)
    sigma = jax.random.uniform(keys[6], minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
    ksize = gaussian_kernel_size(cfg.blur_sigma[1])
    x = maybe(cfg.blur_prob, keys[5], lambda v: gaussian_blur(v, sigma, ksize), x)
    return maybe(cfg.solarize_prob, keys[7], solarize, x)


def unit_rgb(image):
    """uint8 [H, W, C] (C = 1 or 3) -> float32 [H, W, 3] in [0, 1]."""
    x = image.astype(jnp.float32) / 255.0
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def augment_view(image, key, cfg: ViewConfig):
    """One view: uint8 [H, W, C] (C = 1 or 3) and a key -> float32 [S, S, 3] in [0, 1]."""
    keys = jax.random.split(key, 8)
    x = unit_rgb(image)
    window = crop_window(keys[0], x.shape[0], x.shape[1], cfg.crop_scale, cfg.crop_ratio)
    return photometric(resized_crop(x, *window, cfg.image_size), keys, cfg)


def augment_batch(images, keys, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """Both views of a batch: uint8 [B, H, W, C], keys [B] -> two float32 [B, S, S, 3]."""
    def pair(image, key):
        k_a, k_b = jax.random.split(key)
        return augment_view(image, k_a, cfg_a), augment_view(image, k_b, cfg_b)

    return jax.vmap(pair)(images, keys)


def augment_cropped_batch(crops_a, crops_b, keys, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """Photometric ops on crops the host already took: uint8 [B, S, S, 3] x 2, keys [B] ->
    two float32 [B, S, S, 3]."""
    def pair(crop_a, crop_b, key):
        k_a, k_b = jax.random.split(key)
        return (photometric(unit_rgb(crop_a), jax.random.split(k_a, 8), cfg_a),
                photometric(unit_rgb(crop_b), jax.random.split(k_b, 8), cfg_b))

    return jax.vmap(pair)(crops_a, crops_b, keys)


def make_view_fn(seed: int, cfg_a: ViewConfig, cfg_b: ViewConfig, mean, std):
    """The per-device batch transform of data.augment_on = "device".

    Returns a function of a batch in one of the two on-device layouts of `bt_jax.data.layout`
    ("image": uint8 [B, H, W, C], crop and all else on device; or "crop_a", "crop_b": uint8
    [B, S, S, 3], decoded and cropped on the host; both with "index", "epoch": int [B]) ->
    {"view_a": float32 [B, S, S, 3], "view_b": same}, normalised with mean and std ([3]).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)

    def views(batch: dict) -> dict:
        keys = example_keys(seed, batch["epoch"], batch["index"])
        if IMAGE in batch:
            a, b = augment_batch(batch[IMAGE], keys, cfg_a, cfg_b)
        else:
            a, b = augment_cropped_batch(*(batch[k] for k in CROPS), keys, cfg_a, cfg_b)
        return dict(zip(VIEWS, ((a - mean) / std, (b - mean) / std)))

    return views
