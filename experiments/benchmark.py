"""Speed of the training step, the loss alone and the input augmentation alone.

  python experiments/benchmark.py --what step --preset cifar-r18          # this CPU
  python experiments/benchmark.py --what step --preset imagenet-r50 --dtype bfloat16 \\
      --batch 256 --augment device                                     # a GPU
  python experiments/benchmark.py --what loss --n 256 --d 8192          # direct vs Gram
  python experiments/benchmark.py --what loss --n 256,1024,1536 --d 2048  # the crossover
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python experiments/benchmark.py --what loss --loss-devices 8 --n 512,2048 --d 4096
  python experiments/benchmark.py --what step --preset cifar-r18 --torch --xla-defaults
  python experiments/benchmark.py --what step --preset fmnist-quick --conv-impl xla

Train step: pairs/s (median over timed steps after warm-up, each step synchronised with
block_until_ready), compile time (lowering plus XLA compilation), peak device memory (the
backend's memory_stats; the process's peak RSS on the CPU backend), FLOPs per step from
XLA's cost analysis of the compiled step, hence achieved FLOP/s and its share of the
device's peak: on a CPU the peak is measured with a large float32 matmul, on accelerators
it is the vendor's published dense peak for the dtype. Synthetic inputs only: bt_jax.data's
TensorFlow pipeline is never imported (`--augment device` runs the JAX augmentations inside
the step on uint8 images; `--augment none` feeds ready views). `--torch` also times
experiments/torch_reference.py's step on the same batch, image size and threads, in the
same run, and prints the ratio; `--xla-defaults` also times the step compiled with XLA's
default options instead of bt_jax.parallel.compiler_options (the before / after).

Loss: value and gradients of barlow_twins_loss on both paths for each --n; with
--loss-devices W the batch is sharded over W devices, and the row gives the floats each
device sends per call (ring collectives: the direct path all-reduces C, the Gram path
all-gathers the views and reduce-scatters their gradients).

Every result row is appended to --csv (experiments/results/benchmark.csv) and printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_timing import (PUBLISHED_PEAKS, compile_and_count, cpu_peak_flops,  # noqa: E402,F401
                          device_peak, median_seconds, peak_memory)

PRESETS = {
    # ResNet-18 with the CIFAR stem at 32 px, projector 2048-2048-2048 (the CPU target).
    "cifar-r18": dict(backbone="resnet18", stem="cifar", width=1.0, image_size=32,
                      projector=(2048, 2048, 2048), batch=128),
    # The paper's model at 224 px.
    "imagenet-r50": dict(backbone="resnet50", stem="imagenet", width=1.0, image_size=224,
                         projector=(8192, 8192, 8192), batch=256),
    # configs/fashion_mnist_quick.py's model (ResNet-18, 3x3 conv + 2x2 max-pool stem) at the
    # width it had until tuning run q13; --width 0.5 gives the recipe's current one.
    "fmnist-quick": dict(backbone="resnet18", stem="cifar_pool", width=0.25, image_size=28,
                         projector=(1024, 1024), batch=256),
    # A few seconds anywhere: the harness's own test.
    "tiny": dict(backbone="resnet18", stem="cifar", width=0.125, image_size=16,
                 projector=(64, 64, 64), batch=16),
}

CSV_FIELDS = ("what", "impl", "device", "devices", "threads", "model", "image_size",
              "projector", "batch", "dtype", "augment", "n", "d", "path", "median_ms",
              "pairs_per_s", "compile_s", "peak_memory_mb", "memory_kind", "flops_per_step",
              "achieved_tflops", "peak_tflops", "peak_source", "fraction_of_peak",
              "floats_moved", "steps",
              "jax_version", "host")


def step_config(args, conv_impl: str = "auto"):
    """An ml_collections config for the benchmarked model (the trainer's own fields)."""
    from bt_jax.config import base_config  # pylint: disable=import-outside-toplevel
    c = base_config()
    c.batch_size = args.batch
    c.data.image_size = args.image_size
    c.model.backbone = args.backbone
    c.model.stem = args.stem
    c.model.width = args.width
    c.model.projector_dims = tuple(args.projector)
    c.model.dtype = args.dtype
    c.model.conv_impl = conv_impl
    c.monitor.online_probe = False
    c.loss.correlation_path = args.path
    return c


def bench_train_step(args, xla_options=None, conv_impl: str = "auto",
                     fuse_views: bool = False) -> dict:
    """The trainer's jit(shard_map) step on synthetic inputs over args.devices devices,
    compiled with bt_jax's XLA options (None) or the given ones ({}: XLA's defaults), its
    convolutions run as model.conv_impl = conv_impl. With --augment device the views are
    made on the device by their own program before the step's, as the trainer does, or
    inside the step (fuse_views)."""
    from bt_jax import parallel, train  # pylint: disable=import-outside-toplevel
    config = step_config(args, conv_impl)
    total = args.steps + args.warmup + 1
    config.num_steps = total
    if args.augment == "device":
        config.data.augment_on = "device"
    # The trainer's assembly (`train.assemble`) on a synthetic epoch of `total` steps: its
    # mesh, model, LARS schedules, on-device views and state.
    run = train.assemble(config, jax.devices()[:args.devices],
                         shape=train.RunShape(examples=args.batch * total, num_classes=0,
                                              channels=3, gather_on_host=True))
    mesh, model, tx = run.mesh, run.programs.model, run.programs.tx
    make_views = run.programs.make_views
    state = parallel.replicate(run.state, mesh)
    rng = np.random.default_rng(0)
    s = args.image_size
    if make_views is not None:
        host = {"image": rng.integers(0, 256, (args.batch, s, s, 3), dtype=np.uint8),
                "index": np.arange(args.batch, dtype=np.int32),
                "epoch": np.zeros(args.batch, np.int32)}
    else:
        host = {k: rng.normal(size=(args.batch, s, s, 3)).astype(np.float32)
                for k in ("view_a", "view_b")}
    batch = parallel.host_to_global(host, mesh)
    # The trainer's programs (`train.make_train_step`), composed here from its pieces so
    # that the XLA options and the views' placement can vary.
    body = train.train_step_body(model, tx, config.loss)
    if make_views is not None and fuse_views:      # one program: views first in the step
        def body(state, batch, inner=body):  # pylint: disable=function-redefined
            return inner(state, train.update_inputs(make_views(batch), batch))
    update = parallel.data_parallel(body, mesh, num_replicated_args=1, donate_state=True,
                                    xla_options=xla_options)
    if make_views is not None and not fuse_views:  # two programs: views, then the update
        views = parallel.sharded_map(make_views, mesh, xla_options=xla_options)
        views, views_s, views_flops = compile_and_count(views, batch)
        update, compile_s, flops = compile_and_count(update, state, views(batch))
        compile_s, flops = compile_s + views_s, flops + views_flops

        def step(state, batch):
            return update(state, views(batch))
    else:
        step, compile_s, flops = compile_and_count(update, state, batch)

    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics["loss"])

    _, sec = median_seconds(run, steps=args.steps, warmup=args.warmup)
    mem, mem_kind = peak_memory()
    impl = "bt_jax (JAX)" if xla_options is None else "bt_jax (XLA default options)"
    if conv_impl != "auto":
        impl = f"bt_jax (JAX, conv_impl={conv_impl})"
    if make_views is not None and fuse_views:
        impl = impl[:-1] + ", views made inside the step)"
    return {"what": "train step", "impl": impl, "median_ms": sec * 1e3,
            "pairs_per_s": args.batch / sec, "compile_s": compile_s,
            "peak_memory_mb": mem, "memory_kind": mem_kind, "flops_per_step": flops,
            "seconds": sec}


def bench_loss(n: int, d: int, path: str, steps: int, warmup: int, devices: int = 1) -> dict:
    """Value and gradients of barlow_twins_loss for [n, d] float32 embeddings (n: the global
    batch). devices > 1: inside shard_map over that many devices with axis_name, so the
    direct path psums the [d, d] matrix and the Gram path all-gathers the [n, d] views (and
    reduce-scatters their gradients)."""
    import functools  # pylint: disable=import-outside-toplevel
    from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
    from bt_jax import losses, parallel  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(n, d)).astype(np.float32)
    z_b = (z_a + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    if devices == 1:
        fn = jax.jit(jax.value_and_grad(functools.partial(losses.barlow_twins_loss, path=path),
                                        argnums=(0, 1)))
        z_a, z_b = jnp.asarray(z_a), jnp.asarray(z_b)
    else:
        if jax.device_count() < devices:
            raise SystemExit(
                f"error: --loss-devices {devices} but JAX sees {jax.device_count()} device(s). "
                "On a CPU, start with XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{devices}.")
        mesh = parallel.make_mesh(jax.devices()[:devices])
        parallel.per_device_batch_size(n, mesh)
        loss = functools.partial(losses.barlow_twins_loss, path=path,
                                 axis_name=parallel.BATCH_AXIS)
        spec = P(parallel.BATCH_AXIS)
        fn = jax.jit(jax.shard_map(jax.value_and_grad(loss, argnums=(0, 1)), mesh=mesh,
                                   in_specs=(spec, spec), out_specs=(P(), (spec, spec))))
        z_a, z_b = (parallel.host_to_global(z, mesh) for z in (z_a, z_b))
    fn, compile_s, flops = compile_and_count(fn, z_a, z_b)
    _, sec = median_seconds(lambda: jax.block_until_ready(fn(z_a, z_b)), steps=steps,
                            warmup=warmup)
    return {"what": "loss value+grad", "impl": "bt_jax (JAX)", "n": n, "d": d, "path": path,
            "median_ms": sec * 1e3, "compile_s": compile_s, "flops_per_step": flops,
            "seconds": sec, "devices": devices, "batch": "", "model": "", "projector": "",
            "image_size": "", "augment": "", "floats_moved": loss_floats_moved(n, d, path,
                                                                              devices)}


def loss_floats_moved(n: int, d: int, path: str, devices: int) -> float:
    """Floats each device sends per value-and-gradient call of the loss with a ring
    collective over `devices` (0 on one device): the direct path all-reduces the [d, d]
    matrix C (2 (W-1)/W d^2); the Gram path all-gathers both [n, d] views forward
    (2 (W-1)/W n d) and its backward pass sends nothing (its derivative is written out).
    Ratio Gram / direct: n / d. (The O(d) psums of the batch mean and variance are left
    out: both paths have them.)"""
    share = (devices - 1) / devices
    return share * (2 * d * d if path == "direct" else 2 * n * d)


def bench_augment(args) -> dict:
    """The on-device augmentation alone (both views of args.batch uint8 images)."""
    from bt_jax.config import base_config  # pylint: disable=import-outside-toplevel
    from bt_jax.data import device_augment  # pylint: disable=import-outside-toplevel
    from bt_jax.data.views import view_configs  # pylint: disable=import-outside-toplevel
    c = base_config()
    c.data.image_size = args.image_size
    c.data.augment_on = "device"
    views = jax.jit(device_augment.make_view_fn(0, *view_configs(c.data), [0.5] * 3, [0.25] * 3))
    rng = np.random.default_rng(0)
    s = args.image_size
    batch = {"image": jnp.asarray(rng.integers(0, 256, (args.batch, s, s, 3), dtype=np.uint8)),
             "index": jnp.arange(args.batch, dtype=jnp.int32),
             "epoch": jnp.zeros(args.batch, jnp.int32)}
    views, compile_s, flops = compile_and_count(views, batch)
    _, sec = median_seconds(lambda: jax.block_until_ready(views(batch)), steps=args.steps,
                                warmup=args.warmup)
    return {"what": "device augmentation", "impl": "bt_jax (JAX)", "median_ms": sec * 1e3,
            "pairs_per_s": args.batch / sec, "compile_s": compile_s,
            "flops_per_step": flops, "seconds": sec, "devices": 1, "model": "",
            "projector": ""}


def bench_torch(args) -> dict:
    """experiments/torch_reference.py's training step, same model, batch and threads."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import torch_reference  # pylint: disable=import-outside-toplevel
    r = torch_reference.benchmark_step(
        backbone=args.backbone, stem=args.stem, width=args.width, image_size=args.image_size,
        projector=tuple(args.projector), batch=args.batch, steps=args.steps,
        warmup=args.warmup, threads=args.threads)
    return {"what": "train step", "impl": f"PyTorch {r['torch_version']} (reference)",
            "median_ms": r["seconds"] * 1e3, "pairs_per_s": args.batch / r["seconds"],
            "peak_memory_mb": r["peak_rss_mb"], "memory_kind": "host peak RSS",
            "seconds": r["seconds"]}


def with_context(row: dict, args, peak: tuple[float, str]) -> dict:
    """The row plus the run's settings and achieved / peak FLOP/s."""
    device = jax.devices()[0]
    out = {"device": device.device_kind if device.platform != "cpu" else
           f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
           "devices": args.devices, "threads": args.threads,
           "model": f"{args.backbone} {args.stem} x{args.width:g}",
           "image_size": args.image_size, "projector": "-".join(map(str, args.projector)),
           "batch": args.batch, "dtype": args.dtype, "augment": args.augment,
           "steps": args.steps, "jax_version": jax.__version__, "host": platform.node()}
    out.update(row)
    if row.get("flops_per_step") and row["impl"].startswith("bt_jax"):
        # XLA's cost analysis of a shard_map'd program counts one device's share: the step's
        # FLOPs are that times the devices.
        out["flops_per_step"] = row["flops_per_step"] * out["devices"]
        achieved = out["flops_per_step"] / row["seconds"]
        out["achieved_tflops"] = achieved / 1e12
        out["peak_tflops"] = peak[0] / 1e12
        out["peak_source"] = peak[1]
        # Virtual CPU devices share the cores whose peak was measured; accelerators add up.
        chips = 1 if device.platform == "cpu" else out["devices"]
        out["fraction_of_peak"] = achieved / (peak[0] * chips) if peak[0] else ""
    out.pop("seconds", None)
    return {k: out.get(k, "") for k in CSV_FIELDS}


def append_csv(rows: list[dict], path: str) -> None:
    """Appends rows under CSV_FIELDS; a file written with other columns (an older version
    of this script) is first rewritten under the new header, its rows kept."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != CSV_FIELDS:
                old = [{k: r.get(k, "") for k in CSV_FIELDS} for r in reader]
    if old or not os.path.exists(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(old)
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=CSV_FIELDS).writerows(rows)


def format_rows(rows: list[dict]) -> str:
    cols = [("what", "what"), ("impl", "impl"), ("devices", "devices"), ("path", "path"),
            ("n", "N"), ("d", "D"), ("floats_moved", "floats sent"),
            ("batch", "batch"), ("median_ms", "median ms"), ("pairs_per_s", "pairs/s"),
            ("compile_s", "compile s"), ("peak_memory_mb", "peak MB"),
            ("achieved_tflops", "TFLOP/s"), ("fraction_of_peak", "of peak")]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = [" | ".join(title for _, title in cols)]
    lines += [" | ".join(fmt(r[key]) for key, _ in cols) for r in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="step", help="comma list of step, loss, augment")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cifar-r18")
    p.add_argument("--backbone")
    p.add_argument("--stem")
    p.add_argument("--width", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--projector", type=lambda s: tuple(int(v) for v in s.split(",")))
    p.add_argument("--batch", type=int, help="global batch (pairs)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--devices", type=int, default=0, help="0: all local devices")
    p.add_argument("--augment", choices=("device", "none"), default="none")
    p.add_argument("--path", choices=("auto", "direct", "gram"), default="auto",
                   help="the loss's sum C_ij^2 path inside the step")
    p.add_argument("--n", type=lambda s: [int(v) for v in s.split(",")], default=[256],
                   help="loss: global batch rows (comma list: one pair of rows per value)")
    p.add_argument("--loss-devices", type=int, default=1,
                   help="loss: devices to shard the batch over (collectives between them)")
    p.add_argument("--d", type=int, default=8192, help="loss: embedding width")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    p.add_argument("--xla-defaults", action="store_true",
                   help="also time the step compiled with XLA's default options instead of "
                        "bt_jax.parallel.compiler_options (the before/after of PERF_NOTES 4)")
    p.add_argument("--conv-impl", type=lambda s: [v for v in s.split(",") if v != "auto"],
                   default=[], help="also time the step with model.conv_impl set to each of "
                                    "these (comma list of xla, im2col, dense): the before / "
                                    "after of bt_jax.models.conv's per-layer choice")
    p.add_argument("--fused-views", action="store_true",
                   help="with --augment device, also time the views made inside the step's "
                        "program instead of by their own program before it")
    p.add_argument("--csv", default=os.path.join(ROOT, "experiments", "results",
                                                 "benchmark.csv"))
    args = p.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.devices = args.devices or jax.local_device_count()
    args.threads = os.cpu_count()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    peak = device_peak(args.dtype)
    rows = []
    for what in args.what.split(","):
        if what == "step":
            rows.append(bench_train_step(args))
            for conv_impl in args.conv_impl:
                rows.append(bench_train_step(args, conv_impl=conv_impl))
            if args.xla_defaults:
                rows.append(bench_train_step(args, xla_options={}))
            if args.fused_views and args.augment == "device":
                rows.append(bench_train_step(args, fuse_views=True))
            if args.torch:
                rows.append(bench_torch(args))
        elif what == "loss":
            for n in args.n:
                for path in ("direct", "gram"):
                    rows.append(bench_loss(n, args.d, path, args.steps, args.warmup,
                                           args.loss_devices))
        elif what == "augment":
            rows.append(bench_augment(args))
        else:
            raise SystemExit(f"error: --what takes step, loss or augment; got {what!r}.")
    rows = [with_context(r, args, peak) for r in rows]
    append_csv(rows, args.csv)
    print(format_rows(rows))
    steps = {r["impl"]: r["pairs_per_s"] for r in rows if r["what"] == "train step"}
    ours = steps.get("bt_jax (JAX)")
    for impl, pairs_per_s in steps.items():
        if ours and impl != "bt_jax (JAX)":
            print(f"bt_jax / {impl} pairs/s: {ours / pairs_per_s:.2f}x")
    losses_ = [r for r in rows if r["what"] == "loss value+grad"]
    for direct, gram in zip(losses_[::2], losses_[1::2]):
        print(f"loss at N={direct['n']}, D={direct['d']} on {direct['devices']} device(s): "
              f"Gram path {direct['median_ms'] / gram['median_ms']:.2f}x faster than direct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
