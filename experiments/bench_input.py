"""Input-pipeline throughput: bt_jax's tf.data host pipeline against a plain-PIL
implementation of the official PyTorch transform, on the same files and the same cores.

  python experiments/bench_input.py --cores 1,2 --images 256 --repeats 3

Two workloads:
- 224 px: ImageNet-sized JPEGs the script writes itself (500x375, 375x500, 500x333, 400x400
  and 500x500, quality 90, smooth images with texture and noise; about 60 KB each), read
  from disk. The paper's ImageNet augmentations (blur p 1.0 / 0.1, solarize p 0 / 0.2).
- 32 px: CIFAR-sized uint8 arrays held in memory (as torchvision's CIFAR10 holds them),
  with the CIFAR recipe of configs/cifar10.py (no blur, solarize p 0 / 0.2).

Each implementation runs in its own process pinned with sched_setaffinity to the first
`cores` CPUs, so both use exactly the same cores:
- "tf.data": `bt_jax.data.pipeline.train_batches` itself (file reads, crop-first JPEG
  decoding, both views, normalisation, batching), as training runs it.
- "tf.data crops only": the host's share of data.augment_on="device" (decode, crop, bicubic
  resize to uint8 crops); the photometric ops then run on the accelerator.
- "PIL reference": torchvision's transform written in plain PIL + NumPy (torchvision from
  the registry does not install beside the CPU torch here): `Image.open().convert("RGB")`
  (torchvision's loader, full decode), RandomResizedCrop (10 attempts, bicubic),
  horizontal flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) in random order p 0.8 with PIL's
  ImageEnhance and an HSV hue shift as torchvision does on PIL images, grayscale p 0.2,
  GaussianBlur via ImageFilter (sigma U[0.1, 2]), solarize, ToTensor + Normalize. It runs
  in a multiprocessing pool of `cores` workers (PyTorch DataLoader workers) that return
  only a checksum, so no collation or inter-process copy is charged to it: the ratio
  favours the reference.
Also timed: the device-augmentation path (`device_augment.make_view_fn`) under jit on JAX's
default backend: at 32 px from raw images (crop on device too), at 224 px from host crops.

Prints medians of `--repeats` timed passes after one warm-up pass; writes
experiments/results/bench_input_<backend>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

JPEG_SIZES = ((500, 375), (375, 500), (500, 333), (400, 400), (500, 500))   # (w, h)
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def recipe(size: int) -> dict:
    """Per-view probabilities of the workload: ImageNet recipe at 224, CIFAR's at 32."""
    if size >= 64:
        return {"blur_prob": (1.0, 0.1), "solarize_prob": (0.0, 0.2), "blur_sigma": (0.1, 2.0)}
    return {"blur_prob": (0.0, 0.0), "solarize_prob": (0.0, 0.2), "blur_sigma": (0.1, 2.0)}


def natural_image(rng, w: int, h: int) -> np.ndarray:
    """uint8 [h, w, 3]: smooth colour field + edges + texture + noise (JPEG-compressible like
    a photograph, unlike white noise)."""
    from PIL import Image
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8)).resize((w, h),
                                                                            Image.BICUBIC)
    x = np.asarray(low, np.float32)
    for _ in range(3):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        x[y0:y0 + h // 3, x0:x0 + w // 4] = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    x += 20 * np.sin(xx / rng.uniform(3, 9) + yy / rng.uniform(4, 11))[..., None]
    x += rng.normal(0, 6, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def write_jpegs(directory: str, n: int) -> list[str]:
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(directory, "all"), exist_ok=True)
    paths = []
    for i in range(n):
        w, h = JPEG_SIZES[i % len(JPEG_SIZES)]
        path = os.path.join(directory, "all", f"{i:05d}.jpg")
        Image.fromarray(natural_image(rng, w, h)).save(path, quality=90)
        paths.append(path)
    return paths


def cifar_like(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack([natural_image(rng, 32, 32) for _ in range(n)])


# ------------------------------------------------------------------------- PIL reference

def _rrc_params(w: int, h: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params: (top, left, crop_h, crop_w)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _pil_hue(img, factor: float):
    from PIL import Image
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, np.uint8)
    with np.errstate(over="ignore"):
        hue = hue + np.uint8(round(factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def pil_view(img, rng, size: int, blur_prob: float, solarize_prob: float, blur_sigma):
    """One view with torchvision's transform semantics; float32 [3, size, size]."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps
    top, left, ch, cw = _rrc_params(img.width, img.height, rng)
    img = img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.8:
        ops = [lambda x, f=rng.uniform(0.6, 1.4): ImageEnhance.Brightness(x).enhance(f),
               lambda x, f=rng.uniform(0.6, 1.4): ImageEnhance.Contrast(x).enhance(f),
               lambda x, f=rng.uniform(0.8, 1.2): ImageEnhance.Color(x).enhance(f),
               lambda x, f=rng.uniform(-0.1, 0.1): _pil_hue(x, f)]
        for k in rng.permutation(4):
            img = ops[k](img)
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*blur_sigma)))
    if rng.random() < solarize_prob:
        img = ImageOps.solarize(img, 128)
    x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)


def _pil_pair(args) -> float:
    """Both views of one item (a path, or a uint8 array); returns a checksum only."""
    item, i, size = args
    from PIL import Image
    rng = np.random.default_rng(i)
    img = (Image.open(item).convert("RGB") if isinstance(item, str)
           else Image.fromarray(item))
    r = recipe(size)
    a = pil_view(img, rng, size, r["blur_prob"][0], r["solarize_prob"][0], r["blur_sigma"])
    b = pil_view(img, rng, size, r["blur_prob"][1], r["solarize_prob"][1], r["blur_sigma"])
    return float(a[0, 0, 0] + b[0, 0, 0])


def time_pil(items, size: int, cores: int, repeats: int) -> list[float]:
    import multiprocessing
    tasks = [(item, i, size) for i, item in enumerate(items)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            pool.map(_pil_pair, tasks, chunksize=8)
            times.append(time.perf_counter() - t)
    return times[1:]


# ------------------------------------------------------------------------ tf.data (bt_jax)

def _config(size: int, batch: int, augment_on: str = "host"):
    from bt_jax import config as config_lib
    c = config_lib.base_config()
    c.batch_size = batch
    c.data.image_size = size
    c.data.augment_on = augment_on
    r = recipe(size)
    c.data.augment.blur_prob = r["blur_prob"]
    c.data.augment.solarize_prob = r["solarize_prob"]
    c.data.augment.blur_sigma = r["blur_sigma"]
    return c


def time_tf(source, size: int, batch: int, repeats: int, augment_on: str) -> list[float]:
    """augment_on="host": the whole transform; "device": the host's part of the device
    path (decode, crop and resize to uint8 crops; in-memory images pass through)."""
    from bt_jax.data import sources, pipeline
    from bt_jax.data.layout import batch_layout
    from bt_jax.data.views import view_configs
    c = _config(size, batch, augment_on)
    stats = (np.asarray(sources.IMAGENET_MEAN, np.float32),
             np.asarray(sources.IMAGENET_STD, np.float32))
    steps = pipeline.steps_per_epoch(source, batch)
    stream = pipeline.train_batches(source, batch_layout(augment_on, source.gather_on_host),
                                    view_configs(c.data), seed=c.seed, global_batch=batch,
                                    stats=stats)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for _ in range(steps):
            next(stream)
        times.append(time.perf_counter() - t)
    return times[1:]


def worker(args) -> None:
    """One measurement in this process, pinned to the first args.cores CPUs; prints JSON."""
    cpus = sorted(os.sched_getaffinity(0))[:int(args.cores)]
    os.sched_setaffinity(0, cpus)
    if args.size >= 64:
        from bt_jax.data import sources
        paths = sorted(os.path.join(args.data, "all", f)
                       for f in os.listdir(os.path.join(args.data, "all")))
        n = len(paths) // args.batch * args.batch
        paths = paths[:n]
        source = sources.FileSplit(np.asarray(paths, object), np.zeros(n, np.int32), 0)
        items = paths
    else:
        images = np.load(os.path.join(args.data, "cifar_like.npy"))
        n = len(images) // args.batch * args.batch
        images = images[:n]
        items = list(images)
    if args.worker == "pil":
        times = time_pil(items, args.size, int(args.cores), args.repeats)
    else:
        from bt_jax.data import sources
        if args.size < 64:
            source = sources.Split(images, np.zeros(n, np.int32), 1)
        times = time_tf(source, args.size, args.batch, args.repeats,
                        "device" if args.worker == "tfcrop" else "host")
    print(json.dumps({"seconds": times, "views": 2 * n, "cpus": cpus}))


def run_worker(kind: str, size: int, cores: int, data: str, batch: int, repeats: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--size", str(size),
           "--cores", str(cores), "--data", data, "--batch", str(batch),
           "--repeats", str(repeats)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    median = statistics.median(out["seconds"])
    return {"views_per_s": out["views"] / median, "seconds": out["seconds"], "cpus": out["cpus"]}


# ----------------------------------------------------------------------- device path (JAX)

def time_device(size: int, batch: int, repeats: int) -> tuple[str, float]:
    import jax
    from bt_jax.data import device_augment
    from bt_jax.data.views import view_configs
    c = _config(size, batch)
    fn = jax.jit(device_augment.make_view_fn(0, *view_configs(c.data), MEAN, STD))
    rng = np.random.default_rng(0)
    idx = {"index": np.arange(batch, dtype=np.int32), "epoch": np.zeros(batch, np.int32)}
    if size < 64:
        data = {"image": cifar_like(batch), **idx}
    else:
        crops = rng.integers(0, 256, (2, batch, size, size, 3), np.uint8)
        data = {"crop_a": crops[0], "crop_b": crops[1], **idx}
    data = jax.device_put(data)
    jax.block_until_ready(fn(data))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(data))
        times.append(time.perf_counter() - t)
    return jax.default_backend(), 2 * batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", default="1,2", help="comma-separated core counts")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--images", type=int, default=256, help="images at 224 px (x8 at 32 px)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    p.add_argument("--worker", choices=["tf", "tfcrop", "pil"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    cores = [int(c) for c in args.cores.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as data:
        write_jpegs(data, args.images)
        np.save(os.path.join(data, "cifar_like.npy"), cifar_like(8 * args.images))
        mean_kb = np.mean([os.path.getsize(os.path.join(data, "all", f))
                           for f in os.listdir(os.path.join(data, "all"))]) / 1024
        for size in sizes:
            for n in cores:
                got = {}
                kinds = [("tf", "tf.data (bt_jax)"), ("pil", "PIL reference")]
                if size >= 64:   # at 32 px the device path's host part only gathers
                    kinds.append(("tfcrop", "tf.data crops only"))
                for kind, name in kinds:
                    r = run_worker(kind, size, n, data, args.batch, args.repeats)
                    got[kind] = r["views_per_s"]
                    rows.append({"size": size, "impl": name, "cores": n, **r,
                                 "views_per_s_per_core": r["views_per_s"] / n})
                    print(f"{size:>4} px  {name:<17} {n} core(s): {r['views_per_s']:8.1f} "
                          f"views/s  ({r['views_per_s'] / n:7.1f} per core)", flush=True)
                ratios.append({"size": size, "cores": n, "tf_over_pil": got["tf"] / got["pil"],
                               **({"crops_only_over_pil": got["tfcrop"] / got["pil"]}
                                  if "tfcrop" in got else {})})
                print(f"{size:>4} px  ratio tf.data / PIL on {n} core(s): "
                      f"{got['tf'] / got['pil']:.2f}x", flush=True)
            backend, vps = time_device(size, args.batch, args.repeats)
            rows.append({"size": size, "impl": f"device path ({backend})", "cores": None,
                         "views_per_s": vps})
            print(f"{size:>4} px  device path on {backend}: {vps:8.1f} views/s", flush=True)
    import jax
    result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs, {platform.system()}",
              "jpeg_mean_kb": round(float(mean_kb), 1), "rows": rows, "ratios": ratios}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"bench_input_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
