"""Throughput of the two augmentation paths: host (tf.data) and device (JAX, vmapped).

  python experiments/bench_augment.py --sizes 32,224 --repeats 5

Both paths make pairs of views with the paper's full augmentation set (view A: blur p 1.0;
view B: blur p 0.1, solarize p 0.2) from the same in-memory uint8 images (smooth synthetic
images, 1.15x the output size so the crop is real). The host path is the training
pipeline's tf.data map (parallel, deterministic) and includes the batching; the device path
is `device_augment.augment_batch` under jit on whatever JAX's default backend is (the CPU
here: it measures the code, not an accelerator). Prints medians of `--repeats` timed passes
after one warm-up pass and writes experiments/results/bench_augment_<backend>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from bt_jax.data import augment, device_augment
from bt_jax.data.views import ViewConfig


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """[n, size, size, 3] uint8: random colour gradients with a bright rectangle and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 1, (3, 3))
        img = a * xx[..., None] + b * yy[..., None] + c * (1 - xx * yy)[..., None]
        y0, x0 = rng.integers(0, size // 2, 2)
        img[y0:y0 + size // 3, x0:x0 + size // 4] = rng.uniform(0.5, 1, 3)
        img = img / max(img.max(), 1e-6) + rng.normal(0, 0.03, img.shape)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def view_configs(size: int) -> tuple[ViewConfig, ViewConfig]:
    sigma = (0.1, 2.0) if size >= 64 else (0.1, 1.0)
    return (ViewConfig(size, blur_sigma=sigma),
            ViewConfig(size, blur_sigma=sigma, blur_prob=0.1, solarize_prob=0.2))


def time_host(images: np.ndarray, size: int, batch: int, repeats: int) -> list[float]:
    cfg_a, cfg_b = view_configs(size)
    const = tf.constant(images)

    def pair(i):
        return augment.augment_pair(tf.gather(const, i), augment.view_seed(0, 0, i), cfg_a, cfg_b)

    ds = (tf.data.Dataset.range(len(images))
          .map(pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(batch).prefetch(tf.data.AUTOTUNE))
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        for _ in ds.as_numpy_iterator():
            pass
        if r:
            times.append(time.perf_counter() - t)
    return times


def time_device(images: np.ndarray, size: int, batch: int, repeats: int) -> list[float]:
    cfg_a, cfg_b = view_configs(size)
    fn = jax.jit(lambda im, e, i: device_augment.augment_batch(
        im, device_augment.example_keys(0, e, i), cfg_a, cfg_b))
    chunks = [(jnp.asarray(images[s:s + batch]), jnp.zeros(batch, jnp.int32),
               jnp.arange(s, s + batch, dtype=jnp.int32))
              for s in range(0, len(images) - batch + 1, batch)]
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        for chunk in chunks:
            out = fn(*chunk)
        jax.block_until_ready(out)
        if r:
            times.append(time.perf_counter() - t)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default: experiments/results/"
                        "bench_augment_<backend>.json)")
    args = parser.parse_args()
    tf.config.set_visible_devices([], "GPU")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        images = synthetic_images(args.images, int(round(size * 1.15)))
        pairs = (args.images // args.batch) * args.batch
        for path, timer in (("host tf.data", time_host), ("device JAX", time_device)):
            times = timer(images, size, args.batch, args.repeats)
            med = statistics.median(times)
            rows.append({"size": size, "path": path, "median_s": med,
                         "pairs_per_s": (pairs if path == "device JAX" else args.images) / med,
                         "times_s": times})
            print(f"{size:>4} px  {path:<13} {rows[-1]['pairs_per_s']:>9.1f} pairs/s "
                  f"(median of {len(times)} passes, {med:.2f} s)", flush=True)
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "jax_backend": jax.default_backend(), "jax_devices": [str(d) for d in jax.devices()],
            "args": vars(args), "rows": rows}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"bench_augment_{jax.default_backend()}.json")
    with open(out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
