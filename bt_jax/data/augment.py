"""The Barlow Twins paired-view augmentations as stateless tf ops.

Paper, Sec. 4 and Appendix: RandomResizedCrop (scale (0.08, 1), bicubic), horizontal flip
(p 0.5), colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, applied
with p 0.8 in random order), grayscale (p 0.2), Gaussian blur (sigma U[0.1, 2]; p 1.0 for
view A and 0.1 for view B), solarisation (p 0.0 for A, 0.2 for B). Semantics follow
torchvision's transforms on images in [0, 1].

Every function takes an explicit seed (an int32/int64 tensor of shape [2]), so a view is a
pure function of (image, seed): `view_seed(seed, epoch, index)` makes it a function of
(run seed, epoch, example index) and a resumed run sees the same views.

Views come from decoded images (`augment_pair`: in-memory splits) or from encoded bytes
(`augment_pair_encoded`: files and TFDS records), where both crop windows are drawn from
the image's header size first and only the box around them is decoded; `photometric` is the
part after the crop, and `crop_pair_encoded` the host's part of data.augment_on="device".
"""
from __future__ import annotations

import math
from typing import Sequence

from bt_jax.data import import_tensorflow
from bt_jax.data.views import ViewConfig, gaussian_kernel_size

tf = import_tensorflow("Host augmentation and image decoding (bt_jax.data.augment)")

__all__ = ["ViewConfig", "gaussian_kernel_size", "view_seed", "crop_window", "decode_rgb",
           "decode_crop", "augment_view", "augment_pair", "augment_view_encoded",
           "augment_pair_encoded", "crop_pair_encoded"]


def view_seed(seed: int, epoch, index) -> tf.Tensor:
    """[2] int64 seed of one example in one epoch: a function of (seed, epoch, index)."""
    base = tf.constant([seed, 0x5EED], tf.int64)
    s = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


def _uniform(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def crop_window(seed, height, width, scale: Sequence[float], ratio: Sequence[float],
                attempts: int = 10):
    """torchvision's RandomResizedCrop.get_params: (top, left, crop_h, crop_w) int32 scalars.

    Up to `attempts` draws of area ~ U(scale) * H * W and log aspect ~ U(log ratio); the
    first that fits wins; otherwise the largest centred crop within the ratio range.
    """
    s_area, s_ratio, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    area = h * w * _uniform(s_area, scale[0], scale[1], [attempts])
    aspect = tf.exp(_uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), [attempts]))
    cw = tf.round(tf.sqrt(area * aspect))
    ch = tf.round(tf.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(fits, tf.int32))
    # Fallback: whole image clamped to the ratio range, centred.
    in_ratio = w / h
    fb_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    any_fit = tf.reduce_any(fits)
    crop_h = tf.where(any_fit, ch[first], fb_h)
    crop_w = tf.where(any_fit, cw[first], fb_w)
    top = tf.where(any_fit,
                   tf.floor(_uniform(s_top) * (h - crop_h + 1)),
                   tf.floor((h - crop_h) / 2))
    left = tf.where(any_fit, tf.floor(_uniform(s_left) * (w - crop_w + 1)),
                    tf.floor((w - crop_w) / 2))
    return tuple(tf.cast(v, tf.int32) for v in (top, left, crop_h, crop_w))


def random_resized_crop(image, seed, size: int, scale, ratio):
    """[H, W, C] float in [0, 1] -> [size, size, C]: a random crop, resized bicubically."""
    shape = tf.shape(image)
    top, left, ch, cw = crop_window(seed, shape[0], shape[1], scale, ratio)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([ch, cw, shape[2]]))
    return _resize_unit(crop, size)


LUMA = (0.299, 0.587, 0.114)   # ITU-R 601-2, as PIL's convert("L")


def _luma(image):
    """[H, W, 3] -> [H, W, 1] luma."""
    return tf.reduce_sum(image * tf.constant(LUMA), axis=-1, keepdims=True)


def to_grayscale(image):
    """[H, W, 3] -> [H, W, 3] luma, repeated."""
    return tf.tile(_luma(image), [1, 1, 3])


def _mean_luma(image):
    """Scalar mean of the luma of [H, W, 3]: the channel means' weighted sum (one pass)."""
    return tf.reduce_sum(tf.reduce_mean(image, axis=[0, 1]) * tf.constant(LUMA))


def _blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def color_jitter(image, seed, brightness: float, contrast: float, saturation: float,
                 hue: float):
    """torchvision's ColorJitter on [H, W, 3] in [0, 1]: the four ops in random order."""
    s_perm, s_b, s_c, s_s, s_h = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    factors = (
        _uniform(s_b, max(0.0, 1 - brightness), 1 + brightness),
        _uniform(s_c, max(0.0, 1 - contrast), 1 + contrast),
        _uniform(s_s, max(0.0, 1 - saturation), 1 + saturation),
        _uniform(s_h, -hue, hue),
    )
    ops = (
        lambda x: tf.clip_by_value(x * factors[0], 0.0, 1.0),
        lambda x: _blend(x, _mean_luma(x), factors[1]),
        lambda x: _blend(x, _luma(x), factors[2]),
        lambda x: tf.image.adjust_hue(x, factors[3]),
    )
    order = tf.argsort(_uniform(s_perm, shape=[4]))
    for k in range(4):
        image = tf.switch_case(order[k], [lambda op=op: op(image) for op in ops])
        image.set_shape([None, None, 3])
    return image


def gaussian_blur(image, sigma, kernel_size: int):
    """Separable Gaussian blur of [H, W, 3] with reflect padding (as torchvision); sigma a scalar.

    Needs H, W > kernel_size // 2.
    """
    radius = kernel_size // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    k = k / tf.reduce_sum(k)
    img = image[None]
    img = tf.pad(img, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kv = tf.tile(tf.reshape(k, [kernel_size, 1, 1, 1]), [1, 1, 3, 1])
    kh = tf.tile(tf.reshape(k, [1, kernel_size, 1, 1]), [1, 1, 3, 1])
    img = tf.nn.depthwise_conv2d(img, kv, [1, 1, 1, 1], "VALID")
    img = tf.nn.depthwise_conv2d(img, kh, [1, 1, 1, 1], "VALID")
    return img[0]


def solarize(image, threshold: float = 0.5):
    """PIL's ImageOps.solarize(threshold=128) on [0, 1]: x >= threshold becomes 1 - x."""
    return tf.where(image >= threshold, 1.0 - image, image)


def decode_rgb(encoded):
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3].

    Grayscale is repeated to 3 channels, palettes are expanded, alpha is dropped and 16-bit
    PNGs are scaled to 8 bits.
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _image_shape(encoded):
    """[2] int32 (height, width) of encoded bytes; read from the header alone for JPEGs."""
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                   lambda: tf.shape(decode_rgb(encoded))[:2])


def decode_windows(encoded, windows):
    """Decodes only the bounding box of crop windows, then cuts each window out of it.

    encoded: string [] (JPEG, PNG, ...); windows: list of (top, left, crop_h, crop_w) int32
    scalars. JPEGs decode only the box (`decode_and_crop_jpeg`, as ImageNet pipelines do),
    once for all windows; other formats decode whole. Returns one uint8 [crop_h, crop_w, 3]
    per window.
    """
    top = tf.reduce_min([w[0] for w in windows])
    left = tf.reduce_min([w[1] for w in windows])
    bottom = tf.reduce_max([w[0] + w[2] for w in windows])
    right = tf.reduce_max([w[1] + w[3] for w in windows])

    def jpeg():
        return tf.image.decode_and_crop_jpeg(
            encoded, tf.stack([top, left, bottom - top, right - left]), channels=3)

    def other():
        return decode_rgb(encoded)[top:bottom, left:right]

    box = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    return [box[t - top:t - top + h, lf - left:lf - left + w] for t, lf, h, w in windows]


def decode_crop(encoded, seed, scale, ratio):
    """The random crop window of `crop_window`, drawn from the image's header size before
    decoding; only the window is decoded. Returns uint8 [crop_h, crop_w, 3]."""
    shape = _image_shape(encoded)
    return decode_windows(encoded, [crop_window(seed, shape[0], shape[1], scale, ratio)])[0]


def _resize_unit(crop, size: int):
    """uint8 or [0, 1] float [h, w, C] -> float32 [size, size, C] in [0, 1], bicubic."""
    x = tf.image.convert_image_dtype(crop, tf.float32)
    out = tf.image.resize(x, (size, size), method="bicubic", antialias=True)
    return tf.clip_by_value(out, 0.0, 1.0)


def photometric(x, seeds, cfg: ViewConfig):
    """Flip, colour jitter, grayscale, blur and solarize of a crop: [S, S, 3] in [0, 1].

    seeds: the view's 8 seeds from `_view_seeds`; seeds[0] (the crop's) is not used here.
    """
    def maybe(prob, s, fn, x):
        if prob <= 0.0:
            return x
        if prob >= 1.0:
            return fn(x)
        return tf.cond(_uniform(s) < prob, lambda: fn(x), lambda: x)

    x = maybe(cfg.flip_prob, seeds[1], tf.image.flip_left_right, x)
    x = maybe(cfg.jitter_prob, seeds[2],
              lambda v: color_jitter(v, seeds[3], cfg.brightness, cfg.contrast,
                                     cfg.saturation, cfg.hue), x)
    x = maybe(cfg.grayscale_prob, seeds[4], to_grayscale, x)
    ksize = gaussian_kernel_size(cfg.blur_sigma[1])
    sigma = _uniform(seeds[6], cfg.blur_sigma[0], cfg.blur_sigma[1])
    x = maybe(cfg.blur_prob, seeds[5], lambda v: gaussian_blur(v, sigma, ksize), x)
    x = maybe(cfg.solarize_prob, seeds[7], solarize, x)
    x.set_shape([cfg.image_size, cfg.image_size, 3])
    return x


def _view_seeds(seed):
    """[2] seed -> 8 [2] seeds: crop, flip, jitter, jitter params, gray, blur, sigma, solarize."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, 8))


def augment_view(image, seed, cfg: ViewConfig):
    """One augmented view of a decoded image.

    Args:
      image: [H, W, C] uint8 (C = 1 or 3).
      seed: [2] integer tensor; the view is a pure function of (image, seed).
      cfg: the view's strengths and probabilities.

    Returns:
      [image_size, image_size, 3] float32 in [0, 1].
    """
    seeds = _view_seeds(seed)
    x = tf.image.convert_image_dtype(image, tf.float32)
    if x.shape[-1] == 1:
        x = tf.tile(x, [1, 1, 3])
    x = random_resized_crop(x, seeds[0], cfg.image_size, cfg.crop_scale, cfg.crop_ratio)
    return photometric(x, seeds, cfg)


def crop_view_encoded(encoded, seed, cfg: ViewConfig):
    """The random resized crop of one view from encoded bytes: float32 [S, S, 3] in [0, 1].

    The same crop as `augment_view` with the same seed would take from the decoded image.
    """
    crop = decode_crop(encoded, _view_seeds(seed)[0], cfg.crop_scale, cfg.crop_ratio)
    return _resize_unit(crop, cfg.image_size)


def augment_view_encoded(encoded, seed, cfg: ViewConfig):
    """`augment_view` of an encoded image, decoding only the crop window of a JPEG."""
    return photometric(crop_view_encoded(encoded, seed, cfg), _view_seeds(seed), cfg)


def _pair_seeds(seed):
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


def augment_pair(image, seed, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """Two views of one decoded image: ([S, S, 3], [S, S, 3]) float32 in [0, 1]."""
    s_a, s_b = _pair_seeds(seed)
    return augment_view(image, s_a, cfg_a), augment_view(image, s_b, cfg_b)


def _pair_crops(encoded, seed, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """Both views' crops, resized: two float32 [S, S, 3] in [0, 1], and the views' seeds.

    Both windows are drawn from the header's size first; one partial decode covers both.
    """
    shape = _image_shape(encoded)
    seeds = [_view_seeds(s) for s in _pair_seeds(seed)]
    windows = [crop_window(v[0], shape[0], shape[1], c.crop_scale, c.crop_ratio)
               for v, c in zip(seeds, (cfg_a, cfg_b))]
    crops = decode_windows(encoded, windows)
    return [_resize_unit(x, c.image_size) for x, c in zip(crops, (cfg_a, cfg_b))], seeds


def augment_pair_encoded(encoded, seed, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """`augment_pair` of an encoded image, decoding only the box around the two crops. Each
    view equals `augment_view_encoded` with its seed."""
    (a, b), (seeds_a, seeds_b) = _pair_crops(encoded, seed, cfg_a, cfg_b)
    return photometric(a, seeds_a, cfg_a), photometric(b, seeds_b, cfg_b)


def crop_pair_encoded(encoded, seed, cfg_a: ViewConfig, cfg_b: ViewConfig):
    """The two views' crops only, as uint8 [S, S, 3] each (data.augment_on="device")."""
    crops, _ = _pair_crops(encoded, seed, cfg_a, cfg_b)
    return tuple(tf.image.convert_image_dtype(x, tf.uint8, saturate=True) for x in crops)
