"""The one-command GPU measurement: environment, the ResNet-50 step, the loss paths, the
on-device augmentation, PyTorch beside it, and a short Fashion-MNIST quality run.

  python experiments/gpu_check.py --out DIR             # one GPU: sized for <= 8 minutes
  python experiments/gpu_check.py --out DIR --dry-run   # every part at tiny sizes, any CPU

Writes DIR/gpu_check.json (every field; after each part, so a run cut short keeps what it
measured) and DIR/gpu_check.md (the same as tables). A part that cannot run here (no GPU,
no PyTorch, no Fashion-MNIST files) is written as {"status": "not measured", "why": ...};
one that fails as {"status": "failed", "error": ...}; the others still run.

Parts:
  environment   device kind and count, JAX / jaxlib / CUDA versions, device memory in use.
  resnet50_step the trainer's step (jit + shard_map over every local device) of ResNet-50
                at 224 px in bfloat16, projector 8192-8192-8192, per-device batch 128 and
                256: pairs/s (median of timed steps), compile seconds, peak device memory,
                model FLOP utilisation (XLA's FLOP count of the step / time / the device's
                published dense bf16 peak).
  torch_step    the same step in PyTorch: torchvision's resnet50, channels_last, autocast
                bf16, the same projector, loss and LARS (experiments/torch_reference.py),
                and the ratio of the two pairs/s.
  plan          `python -m bt_jax.plan`'s plan of that step (the first per-device batch)
                for the GPU in hand, compiled for compile-only devices from its data file
                (bt_jax/plan/gpus/; on an H100 x 8, topology "h100:8"), beside what
                resnet50_step measured: memory per device against the measured peak, the
                estimated step against the measured median, the device name and memory
                limit the plan assumed against the device's own. On a CPU (--dry-run) the
                plan is "--topology local".
  loss_paths    value and gradients of the loss on the direct ([D, D]) and Gram ([N, N])
                paths at N = 256 / 1024 / 2048, D = 8192.
  augmentation  the on-device augmentation of both views at 224 px: pairs/s.
  quality       configs/fashion_mnist.py at full width (model.width=1) with on-device
                augmentation, for as many epochs as fit in --quality-seconds (120) of training
                (from the step's measured speed): test linear (fast probe) and kNN accuracy,
                raw pixels beside them, the epochs done.

Needs: JAX with CUDA, flax, optax, orbax-checkpoint, chex, absl-py, ml-collections,
scikit-learn, matplotlib, tensorboard; PyTorch and torchvision for torch_step. No
TensorFlow. Fashion-MNIST's four IDX files (about 30 MB gzipped) in --fmnist-dir: by
default /usr/share/datasets/fashion-mnist, else .carry/fashion-mnist in this repository.
docs/benchmarks.md (GPU check) shows how to carry them and missing wheels to a borrowed machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # PyTorch shares the GPU
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "experiments")):
    if path not in sys.path:
        sys.path.insert(0, path)

import jax  # noqa: E402

import benchmark  # noqa: E402  (experiments/benchmark.py: the timing harness)
from gpu_check_report import not_measured, to_markdown  # noqa: E402

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist", os.path.join(ROOT, ".carry",
                                                                  "fashion-mnist"))
# The sizes of each part: the on a GPU; a few seconds each on a CPU (--dry-run).
FULL = dict(backbone="resnet50", stem="imagenet", width=1.0, image_size=224,
            projector=(8192, 8192, 8192), per_device_batches=(128, 256), steps=10, warmup=2,
            loss_n=(256, 1024, 2048), loss_d=8192, augment_batch=256, quality_width=1.0,
            quality_seconds=120.0)
DRY = dict(backbone="resnet18", stem="cifar", width=0.125, image_size=32,
           projector=(64, 64, 64), per_device_batches=(8, 16), steps=2, warmup=1,
           loss_n=(16, 32, 64), loss_d=128, augment_batch=16, quality_width=0.0625,
           quality_seconds=5.0)


def _gpu() -> bool:
    return jax.devices()[0].platform == "gpu"


def environment() -> dict:
    """Device kind and count, versions, device memory (None fields where the backend has
    none, e.g. memory on the CPU)."""
    import jaxlib  # pylint: disable=import-outside-toplevel
    device = jax.devices()[0]
    out = {"status": "measured", "platform": device.platform, "device_kind": device.device_kind,
           "device_count": jax.device_count(), "jax_version": jax.__version__,
           "jaxlib_version": jaxlib.__version__, "python": platform.python_version(),
           "host": platform.node(), "cpu_count": os.cpu_count(),
           "backend_version": device.client.platform_version}
    out["cuda_version"] = (device.client.platform_version if device.platform == "gpu"
                           else not_measured(f"no CUDA on the {device.platform} backend"))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                              "memory.used", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        out["nvidia_smi"] = not_measured(f"nvidia-smi: {e}")
    return out


def device_memory() -> dict:
    """The first device's allocator statistics in MiB, or not measured."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return not_measured(f"the {jax.devices()[0].platform} backend reports no memory stats")
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {"status": "measured", **{k.replace("bytes", "mib"): stats[k] / 2 ** 20
                                     for k in keys if k in stats}}


def _step_args(sizes: dict, per_device_batch: int) -> SimpleNamespace:
    devices = jax.local_device_count()
    return SimpleNamespace(backbone=sizes["backbone"], stem=sizes["stem"],
                           width=sizes["width"], image_size=sizes["image_size"],
                           projector=sizes["projector"], batch=per_device_batch * devices,
                           dtype="bfloat16", devices=devices, augment="none", path="auto",
                           steps=sizes["steps"], warmup=sizes["warmup"],
                           threads=os.cpu_count())


def resnet50_step(sizes: dict) -> dict:
    """The trainer's step at each per-device batch: pairs/s, compile s, peak memory, MFU."""
    peak_flops, peak_source = benchmark.device_peak("bfloat16")
    published = peak_source.startswith("published")
    rows = []
    for per_device in sizes["per_device_batches"]:
        args = _step_args(sizes, per_device)
        r = benchmark.bench_train_step(args)
        flops = r["flops_per_step"] * args.devices   # cost analysis counts one device's share
        row = {"per_device_batch": per_device, "global_batch": args.batch,
               "devices": args.devices, "median_step_ms": r["median_ms"],
               "pairs_per_s": r["pairs_per_s"], "compile_s": r["compile_s"],
               "flops_per_step": flops,
               "achieved_tflops": flops / r["seconds"] / 1e12 if flops else None}
        if _gpu():
            row["peak_memory_mib"] = r["peak_memory_mb"]
        else:
            row["peak_memory_mib"] = not_measured(
                f"CPU backend, no device allocator; host peak RSS {r['peak_memory_mb']:.0f} MB")
        if published and flops:
            row["mfu"] = flops / r["seconds"] / (peak_flops * args.devices)
            row["peak_tflops_per_device"] = peak_flops / 1e12
            row["peak_source"] = peak_source
        else:
            row["mfu"] = not_measured(f"no published bf16 peak for {jax.devices()[0].device_kind}")
        rows.append(row)
    return {"status": "measured", "model": f"{sizes['backbone']} {sizes['stem']} stem, "
            f"{sizes['image_size']} px, bfloat16, projector "
            + "-".join(map(str, sizes["projector"])), "rows": rows}


def plan_topology() -> str:
    """The planner's topology for the devices in hand: "<gpu>:<count>" for a GPU with a data
    file (bt_jax/plan/gpus/), "local" on a CPU."""
    from bt_jax.plan import gpus  # pylint: disable=import-outside-toplevel
    if not _gpu():
        return "local"
    kind = jax.devices()[0].device_kind.upper()
    for spec in gpus.known().values():
        if spec.kind.upper() in kind:
            return f"{spec.kind}:{min(jax.local_device_count(), spec['gpus_per_node'])}"
    raise ValueError(f"no data file for {jax.devices()[0].device_kind!r} in bt_jax/plan/gpus/")


def plan_vs_measured(sizes: dict, report: dict) -> dict:
    """The plan of resnet50_step's first row for this GPU, beside the row's measurements."""
    # pylint: disable=import-outside-toplevel
    from bt_jax.plan import planner
    from bt_jax.plan.compile import RunShape
    step = report.get("resnet50_step", {})
    if step.get("status") != "measured":
        return not_measured("resnet50_step did not measure a step to compare with")
    row = step["rows"][0]
    config = benchmark.step_config(_step_args(sizes, row["per_device_batch"]))
    topology = plan_topology()
    shape = RunShape(examples=1_281_167, num_classes=1000, channels=3, gather_on_host=False)
    plan, _ = planner.make_plan(config, topology, shape, progress=lambda *_: None)
    needed_mib = plan["memory"]["needed_bytes"] / 2 ** 20
    est_ms = plan["estimate"]["step_seconds"] * 1e3
    out = {"status": "measured", "topology": topology, "compiler": plan["compiler"],
           "per_device_batch": row["per_device_batch"],
           "device_kind_planned": plan["device_kind"],
           "device_kind_here": jax.devices()[0].device_kind,
           "planned_memory_mib": needed_mib,
           "planned_limit_mib": (plan["memory"]["hbm_bytes"] or 0) / 2 ** 20 or None,
           "measured_peak_memory_mib": row["peak_memory_mib"],
           "estimated_step_ms": est_ms, "measured_step_ms": row["median_step_ms"],
           "measured_over_estimated_step": row["median_step_ms"] / est_ms,
           "plan_compile_s": plan["compile_seconds"]}
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    out["device_limit_mib"] = (limit / 2 ** 20 if limit else
                               not_measured(f"the {jax.devices()[0].platform} backend "
                                            "reports no memory limit"))
    if isinstance(row["peak_memory_mib"], (int, float)):
        out["measured_over_planned_memory"] = row["peak_memory_mib"] / needed_mib
    return out


def torch_step(sizes: dict) -> dict:
    """PyTorch's step at each per-device batch on one device (`add_torch_ratio` adds the
    bt_jax / PyTorch ratio once both ran)."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        return not_measured("PyTorch is not installed")
    import torch_reference  # pylint: disable=import-outside-toplevel
    cuda = torch.cuda.is_available()
    if _gpu() and not cuda:
        return not_measured("this PyTorch build sees no CUDA device")
    model = "experiments/torch_reference.py's copy of torchvision's ResNet layout"
    use_torchvision = sizes["backbone"] == "resnet50"
    if use_torchvision:
        try:
            import torchvision.models  # pylint: disable=import-outside-toplevel,unused-import
            model = "torchvision resnet50"
        except Exception as e:  # pylint: disable=broad-except  (a broken install, too)
            use_torchvision = False
            model += f" (torchvision does not import: {type(e).__name__}: {e})"
    rows = []
    for per_device in sizes["per_device_batches"]:
        r = torch_reference.benchmark_step(
            backbone=sizes["backbone"], stem=sizes["stem"], width=sizes["width"],
            image_size=sizes["image_size"], projector=sizes["projector"], batch=per_device,
            steps=sizes["steps"], warmup=sizes["warmup"], threads=os.cpu_count(),
            device="cuda" if cuda else "cpu", amp_bf16=True, use_torchvision=use_torchvision)
        row = {"per_device_batch": per_device, "pairs_per_s": per_device / r["seconds"],
               "median_step_ms": r["seconds"] * 1e3, "torch_version": r["torch_version"],
               "device": torch.cuda.get_device_name(0) if cuda else "cpu",
               "peak_memory_mib": r.get("peak_device_mb") or not_measured(
                   "PyTorch on the CPU: no device allocator")}
        rows.append(row)
    if cuda:
        torch.cuda.empty_cache()   # hand the memory back before JAX's parts
    return {"status": "measured", "model": model + ", bfloat16 autocast, channels_last",
            "rows": rows}


def add_torch_ratio(report: dict) -> None:
    """torch_step rows gain "bt_jax_over_torch": bt_jax's pairs/s per device over PyTorch's
    on one device, at the same per-device batch."""
    ours = {r["per_device_batch"]: r for r in report.get("resnet50_step", {}).get("rows", [])}
    for row in report.get("torch_step", {}).get("rows", []):
        if row["per_device_batch"] in ours:
            j = ours[row["per_device_batch"]]
            row["bt_jax_over_torch"] = j["pairs_per_s"] / j["devices"] / row["pairs_per_s"]


def loss_paths(sizes: dict) -> dict:
    rows = []
    for n in sizes["loss_n"]:
        row = {"n": n, "d": sizes["loss_d"]}
        for path in ("direct", "gram"):
            r = benchmark.bench_loss(n, sizes["loss_d"], path, sizes["steps"], sizes["warmup"])
            row[f"{path}_ms"] = r["median_ms"]
            row[f"{path}_compile_s"] = r["compile_s"]
        row["gram_speedup"] = row["direct_ms"] / row["gram_ms"]
        rows.append(row)
    return {"status": "measured", "what": "value and gradients of barlow_twins_loss, float32",
            "rows": rows}


def augmentation(sizes: dict) -> dict:
    args = SimpleNamespace(image_size=sizes["image_size"], batch=sizes["augment_batch"],
                           steps=sizes["steps"], warmup=sizes["warmup"])
    r = benchmark.bench_augment(args)
    return {"status": "measured", "image_size": sizes["image_size"],
            "batch": sizes["augment_batch"], "pairs_per_s": r["pairs_per_s"],
            "median_ms": r["median_ms"], "compile_s": r["compile_s"]}


def _recipe(path: str):
    from bt_jax import cli  # pylint: disable=import-outside-toplevel
    return cli.load_recipe(path)


def find_fmnist(directory: str = "") -> str:
    """The first folder holding Fashion-MNIST's train and test IDX files, or ""."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for d in ([directory] if directory else FMNIST_DIRS):
        if all(os.path.exists(os.path.join(d, n)) or os.path.exists(os.path.join(d, n + ".gz"))
               for n in names):
            return d
    return ""


def quality_epochs(pairs_per_s: float, seconds: float, num_train: int, batch: int) -> int:
    """Whole epochs of num_train images at pairs_per_s that fit in `seconds` (at least 1)."""
    steps_per_epoch = max(num_train // batch, 1)
    return max(1, int(seconds * pairs_per_s / batch) // steps_per_epoch)


def quality(sizes: dict, fmnist_dir: str, out_dir: str) -> dict:
    """configs/fashion_mnist.py at sizes["quality_width"], as many epochs as fit."""
    from bt_jax import train  # pylint: disable=import-outside-toplevel
    from bt_jax.data import sources  # pylint: disable=import-outside-toplevel
    directory = find_fmnist(fmnist_dir)
    if not directory:
        return not_measured("no Fashion-MNIST IDX files in " + (fmnist_dir or
                                                                 " or ".join(FMNIST_DIRS)))
    c = _recipe(os.path.join(ROOT, "configs", "fashion_mnist.py"))
    c.data.path = directory
    c.model.width = sizes["quality_width"]
    c.data.augment_on = "device"
    c.checkpoint.every_steps = 10 ** 6     # the last step only
    c.monitor.diagnostics_every_steps = 0
    num_train = len(sources.load_split("fashion_mnist", "train", image_size=28,
                                        path=directory))
    c.batch_size = min(c.batch_size, num_train)
    args = SimpleNamespace(backbone=c.model.backbone, stem=c.model.stem, width=c.model.width,
                           image_size=c.data.image_size, projector=tuple(c.model.projector_dims),
                           batch=c.batch_size, dtype=c.model.dtype, devices=1,
                           augment="device", path="auto", steps=sizes["steps"],
                           warmup=sizes["warmup"], threads=os.cpu_count())
    speed = benchmark.bench_train_step(args)["pairs_per_s"]
    epochs = quality_epochs(speed, sizes["quality_seconds"], num_train, c.batch_size)
    c.num_epochs = epochs
    c.optim.warmup_epochs = 0.1 * epochs          # the recipe's tenth of the run
    c.monitor.knn_every_epochs = float(epochs)   # once, at the end: the evaluation's features
    workdir = tempfile.mkdtemp(prefix="gpu_check_fmnist_")
    start = time.perf_counter()
    results = train.train_and_evaluate(c, workdir)
    wall = time.perf_counter() - start
    for name in ("training_curves.png",):
        if os.path.exists(os.path.join(workdir, name)):
            os.replace(os.path.join(workdir, name), os.path.join(out_dir, f"quality_{name}"))
    pixels = results.get("baselines", {}).get("pixels", {})
    return {"status": "measured", "recipe": "configs/fashion_mnist.py",
            "width": c.model.width, "epochs": epochs, "train_images": num_train,
            "step_pairs_per_s": speed, "wall_s": wall,
            "train_s": results.get("train_seconds"),
            "test_linear_top1": results["linear_top1"], "test_knn_top1": results["knn_top1"],
            "pixels_linear_top1": pixels.get("linear_top1"),
            "pixels_knn_top1": pixels.get("knn_top1")}


def write_report(report: dict, out: str, start: float) -> None:
    """gpu_check.json and gpu_check.md in out, total_s counted from start."""
    report["total_s"] = time.perf_counter() - start
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(to_markdown(report) + "\n")


def run_part(report: dict, name: str, fn) -> None:
    """report[name] = fn() plus its seconds, or its failure (the other parts still run)."""
    t0 = time.perf_counter()
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        report[name] = fn()
    except Exception as e:  # pylint: disable=broad-except  (one part's failure is a result)
        report[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                        "traceback": traceback.format_exc()[-4000:]}
    report[name]["seconds"] = time.perf_counter() - t0
    print(f"[gpu_check] {name}: {report[name]['status']} in {report[name]['seconds']:.1f} s",
          flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true",
                   help="every part at tiny sizes (a CPU does it in about a minute)")
    p.add_argument("--fmnist-dir", default="", help="folder of Fashion-MNIST's IDX files")
    p.add_argument("--quality-seconds", type=float, default=None,
                   help="training time of the quality run (default 120; 5 with --dry-run)")
    p.add_argument("--parts", default="environment,torch_step,resnet50_step,plan,loss_paths,"
                   "augmentation,quality", help="comma list of the parts to run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    sizes = dict(DRY if args.dry_run else FULL)
    if args.quality_seconds is not None:
        sizes["quality_seconds"] = args.quality_seconds
    if not args.dry_run and not _gpu():
        print("warning: no GPU: the full sizes on this backend may take hours; use --dry-run",
              file=sys.stderr)
    start = time.perf_counter()
    report = {"dry_run": args.dry_run,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python experiments/gpu_check.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    parts = {"environment": environment,
             # PyTorch first: its cached memory is handed back before JAX allocates.
             "torch_step": lambda: torch_step(sizes),
             "resnet50_step": lambda: resnet50_step(sizes),
             "plan": lambda: plan_vs_measured(sizes, report),
             "loss_paths": lambda: loss_paths(sizes),
             "augmentation": lambda: augmentation(sizes),
             "quality": lambda: quality(sizes, args.fmnist_dir, args.out)}
    unknown = set(args.parts.split(",")) - set(parts)
    if unknown:
        raise SystemExit(f"error: unknown --parts {sorted(unknown)}; known: {list(parts)}.")
    for name, fn in parts.items():
        if name in args.parts.split(","):
            run_part(report, name, fn)
            add_torch_ratio(report)
            report["device_memory"] = device_memory()
            write_report(report, args.out, start)   # a run cut short keeps what it measured
    print(to_markdown(report))
    failed = [k for k, v in report.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
