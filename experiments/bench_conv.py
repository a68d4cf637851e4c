"""Forward + backward time of every convolution of a backbone, for each implementation of
bt_jax.models.conv, beside the one "auto" picks: the measurements behind its rule.

  python experiments/bench_conv.py                                  # fmnist-quick's ResNet
  python experiments/bench_conv.py --stem cifar --width 1 --image-size 32 --batch 256

Each distinct layer (input shape, kernel, stride) is timed as jit(value_and_grad) of
sum(sin(conv)) with respect to the kernel and, except for the stem (whose input is the
image), the input, compiled with bt_jax's XLA options (bt_jax.parallel), median of --steps
calls. The batch is the train step's per-device image count (2 views x pairs). The totals
weight each layer by how often it occurs. Rows go to --csv and are printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bt_jax import parallel  # noqa: E402
from bt_jax.models import conv, make_backbone  # noqa: E402

IMPLS = ("xla", "im2col", "dense")
FIELDS = ("layer", "input", "kernel", "stride", "count", "auto", "xla_ms", "im2col_ms",
          "dense_ms", "best", "device", "jax_version", "host")


def conv_layers(backbone: nn.Module, image_size: int, batch: int) -> list[dict]:
    """The distinct convolutions of backbone on [batch, S, S, 3] inputs, in order:
    {"name", "input", "kernel", "stride", "pad", "count", "first"}."""
    seen: dict = {}

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, conv.Conv) and context.method_name == "__call__":
            x = args[0]
            key = (tuple(x.shape), (m.kernel_size, m.kernel_size, x.shape[-1], m.features),
                   m.strides, m.padding)
            if key in seen:
                seen[key]["count"] += 1
            else:
                seen[key] = {"name": m.name, "input": key[0], "kernel": key[1],
                             "stride": m.strides, "pad": m.padding, "count": 1,
                             "first": not seen}
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: backbone.init(jax.random.key(0),
                                             jnp.zeros((batch, image_size, image_size, 3)),
                                             train=True))
    return list(seen.values())


def time_layer(layer: dict, impl: str, steps: int) -> float:
    """Median seconds of value_and_grad of one layer with one implementation."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, layer["input"])
    w = 0.1 * jax.random.normal(kw, layer["kernel"])

    def loss(w, x):
        return jnp.sum(jnp.sin(conv.conv2d(x, w, layer["stride"], layer["pad"], impl)))

    argnums = (0,) if layer["first"] else (0, 1)
    fn = jax.jit(jax.value_and_grad(loss, argnums=argnums),
                 compiler_options=parallel.compiler_options())
    jax.block_until_ready(fn(w, x))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(w, x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--stem", default="cifar_pool")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--batch", type=int, default=512, help="images per call (2 x pairs)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--csv", default=os.path.join(ROOT, "experiments", "results",
                                                 "bench_conv_cpu.csv"))
    args = p.parse_args(argv)
    backbone = make_backbone(args.backbone, stem=args.stem, width=args.width)
    device = jax.devices()[0]
    where = (device.device_kind if device.platform != "cpu" else
             f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    rows, totals = [], {impl: 0.0 for impl in IMPLS + ("auto", "best")}
    for layer in conv_layers(backbone, args.image_size, args.batch):
        auto = conv.choose_conv_impl(layer["input"], layer["kernel"], layer["stride"],
                                     layer["pad"], backend=jax.default_backend())
        ms = {impl: 1e3 * time_layer(layer, impl, args.steps) for impl in IMPLS}
        best = min(ms, key=ms.get)
        for impl in IMPLS:
            totals[impl] += layer["count"] * ms[impl]
        totals["auto"] += layer["count"] * ms[auto]
        totals["best"] += layer["count"] * ms[best]
        rows.append({"layer": layer["name"], "input": "x".join(map(str, layer["input"])),
                     "kernel": "x".join(map(str, layer["kernel"])), "stride": layer["stride"],
                     "count": layer["count"], "auto": auto,
                     **{f"{impl}_ms": round(ms[impl], 2) for impl in IMPLS}, "best": best,
                     "device": where, "jax_version": jax.__version__,
                     "host": platform.node()})
        r = rows[-1]
        print(f"{r['layer']:<16} {r['input']:>16} k{r['kernel']:<14} s{r['stride']} "
              f"x{r['count']}  xla {r['xla_ms']:8.1f}  im2col {r['im2col_ms']:8.1f}  "
              f"dense {r['dense_ms']:8.1f} ms   auto={auto:<6} best={best}", flush=True)
    print("all layers, ms per forward + backward: " +
          ", ".join(f"{k} {v:.0f}" for k, v in totals.items()) +
          f"; auto vs xla: {totals['xla'] / totals['auto']:.2f}x")
    os.makedirs(os.path.dirname(args.csv), exist_ok=True)
    new = not os.path.exists(args.csv)
    with open(args.csv, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
