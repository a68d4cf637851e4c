"""Why XLA:GPU keeps the train step's all-reduces in about 150 pieces: the paper's recipe
compiled for GPU nodes with XLA:GPU's collective settings changed one at a time, and each
compiled program's collectives, bytes and memory per GPU.

  python experiments/gpu_allreduce.py          # writes experiments/results/gpu_allreduce.json

Each setting is one compile of the trainer's programs (`bt_jax.plan.compile.compile_run`)
with the XLA options passed to its jit, where bt_jax passes its own (`parallel.
compiler_options`, none on GPUs). A setting already in the JSON file is not compiled again:
rerun after an interruption and it goes on. About 40 s a compile on 2 cores.
"""
from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bt_jax.platforms import skip_absent_accelerators  # noqa: E402

skip_absent_accelerators()

OUT = os.path.join(ROOT, "experiments", "results", "gpu_allreduce.json")
MiB = 2 ** 20
# name: (topology, XLA options). XLA:GPU's defaults first; the flags are those of its
# debug options (xla/debug_options_flags.cc) that combine or split all-reduces.
SETTINGS = {
    "default": ("h100:8", {}),
    "combine_threshold_0": ("h100:8", {"xla_gpu_all_reduce_combine_threshold_bytes": 0}),
    "combine_threshold_1GiB": ("h100:8",
                               {"xla_gpu_all_reduce_combine_threshold_bytes": 2 ** 30}),
    "combine_count_100000": ("h100:8", {"xla_gpu_collective_combine_threshold_count": 100000}),
    "no_heuristic_combining": ("h100:8", {
        "xla_gpu_experimental_enable_heuristic_collective_combining": False}),
    "latency_hiding_scheduler": ("h100:8", {"xla_gpu_enable_latency_hiding_scheduler": True}),
    "default_4x8": ("h100:4x8", {}),
    "blueconnect_8_4x8": ("h100:4x8", {"xla_gpu_all_reduce_blueconnect_num_devices_per_host": 8}),
}


def classify(op_name: str) -> str:
    """What an all-reduce carries, from JAX's name of it (kept where XLA did not combine
    it): BatchNorm statistics in the forward or backward pass, a parameter's gradient
    (the transpose of `parallel.to_varying`), or the loss's sums."""
    if "transpose(jvp())" in op_name:
        return "gradient"
    if "transpose(jvp(BarlowTwins))" in op_name:
        return "batchnorm_backward"
    if "jvp(BarlowTwins)" in op_name:
        return "batchnorm_forward"
    return "loss_and_other"


def compile_setting(topology: str, options: dict) -> dict:
    # pylint: disable=import-outside-toplevel
    from bt_jax import cli, parallel
    from bt_jax.plan import chips, compile as plan_compile
    config = cli.load_recipe(os.path.join(ROOT, "configs", "imagenet.py"),
                             ("--config.model.dtype=bfloat16",))
    devices, _ = chips.devices_for(topology)
    own = parallel.compiler_options
    parallel.compiler_options = lambda platform=None: (dict(options) if platform == "gpu"
                                                       else own(platform))
    try:
        run = plan_compile.compile_run(config, devices, plan_compile.run_shape(config.data),
                                       progress=lambda *_: None)
    finally:
        parallel.compiler_options = own
    step = run.programs[-1]
    s = step["collective_summary"]
    kinds = {}
    for c in step["collectives"]:
        key = f"{c['kind']} over {c['group_size']}"
        kinds[key] = kinds.get(key, 0) + 1
    all_reduces = [c for c in step["collectives"] if c["kind"] == "all-reduce"]
    named = {}
    for c in all_reduces:
        if c["op_name"]:
            named[classify(c["op_name"])] = named.get(classify(c["op_name"]), 0) + 1
    return {"topology": topology, "options": options, "compile_seconds": step["compile_seconds"],
            "total_mib": step["total_bytes"] / MiB, "temp_mib": step["temp_bytes"] / MiB,
            "collectives": s["count"], "by_kind_and_group": kinds,
            "all_reduces": len(all_reduces),
            "all_reduce_mb": sum(c["bytes"] for c in all_reduces) / 1e6,
            "collective_mb": s["bytes"] / 1e6, "sent_mb": s["wire_bytes"] / 1e6,
            "sent_between_nodes_mb": s["inter_node_wire_bytes"] / 1e6,
            "all_reduces_by_name": named}


def main() -> None:
    done = json.load(open(OUT)) if os.path.exists(OUT) else {}
    for name, (topology, options) in SETTINGS.items():
        if name in done.get("settings", {}):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {topology} {options}", flush=True)
        row = compile_setting(topology, options)
        print(f"  {row['collectives']} collectives ({row['all_reduces']} all-reduces), "
              f"{row['sent_mb']:.0f} MB sent, {row['total_mib']:.1f} MiB per GPU", flush=True)
        done.setdefault("settings", {})[name] = row
        done["command"] = "python experiments/gpu_allreduce.py"
        done["recipe"] = "configs/imagenet.py --config.model.dtype=bfloat16 (ResNet-50, " \
                         "8192-8192-8192, global batch 2048)"
        with open(OUT, "w") as f:
            json.dump(done, f, indent=1)


if __name__ == "__main__":
    main()
