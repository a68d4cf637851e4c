"""The paper's recipe planned on TPU slices, and the loss's communication, for docs/scaling.md.

  python experiments/plan_pods.py rows [--only NAME ...]   # one `python -m bt_jax.plan` each
  python experiments/plan_pods.py comm                     # the loss's two paths, D = 8192
  python experiments/plan_pods.py tables                   # markdown tables of what is done

`rows` runs each plan as its own process (the command is in its plan.json) into
experiments/results/plans/NAME/ and skips a row whose plan.json is there: rerun it after an
interruption and it goes on. Each compile of ResNet-50 takes minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bt_jax.platforms import skip_absent_accelerators  # noqa: E402

skip_absent_accelerators()   # libtpu / the CUDA plugin with no chip here: no start-up noise
OUT = os.path.join(ROOT, "experiments", "results", "plans")
RECIPE = ["--config", "configs/imagenet.py", "--config.model.dtype=bfloat16"]
# name: (topology, extra arguments). The paper's recipe: ResNet-50, 8192-8192-8192,
# global batch 2048; bfloat16 except the float32 row.
ROWS = {
    "v5e_16": ("v5e:4x4", []),
    "v4_16": ("v4:2x2x4", []),
    "v5p_16": ("v5p:2x2x4", []),
    "v6e_16": ("v6e:4x4", []),
    "v5e_64": ("v5e:8x8", []),
    "v4_64": ("v4:4x4x4", []),
    "v5p_64": ("v5p:4x4x4", []),
    "v6e_64": ("v6e:8x8", []),
    "v5e_16_float32": ("v5e:4x4", ["--config.model.dtype=float32"]),
    "v4_16_float32": ("v4:2x2x4", ["--config.model.dtype=float32"]),
}
# GPU nodes, compiled by XLA:GPU (`pip install 'bt_jax[gpu-plan]'`): one node of 8 and four.
GPU_ROWS = {f"{gpu}_{nodes * 8}": (f"{gpu}:{nodes}x8" if nodes > 1 else f"{gpu}:8", [])
            for gpu in ("h100", "h200", "a100", "b200") for nodes in (1, 4)}
ROWS.update(GPU_ROWS)
# The largest per-chip batch that fits, searched from a row's plan (its batch is not
# compiled again) in multiples of 32: each compile that fits costs minutes here, one that
# the compiler refuses half a minute.
SEARCHES = {"v5e_16": 32, "v4_16": 32, "h100_8": 32}
COMM_BATCHES = (2048, 4096, 16384, 32768)
COMM_TOPOLOGY = "v5e:4x4"


def run_rows(only) -> None:
    for name, (topology, extra) in ROWS.items():
        out = os.path.join(OUT, name)
        if (only and name not in only) or os.path.exists(os.path.join(out, "plan.json")):
            continue
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "-m", "bt_jax.plan", *RECIPE, "--topology", topology,
               "--out", os.path.relpath(out, ROOT), *extra]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", flush=True)
        with open(os.path.join(out, "log.txt"), "w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rc}", flush=True)
    for name, step in SEARCHES.items():
        if not only or name in only:
            search(name, step)


def search(name: str, step: int) -> None:
    """`planner.find_max_batch` from row `name`'s plan.json (the function behind
    `python -m bt_jax.plan --max-batch`), written into that plan.json as "max_batch"."""
    from bt_jax.plan import planner, report  # pylint: disable=import-outside-toplevel
    from bt_jax.plan.compile import run_shape  # pylint: disable=import-outside-toplevel
    path = os.path.join(OUT, name, "plan.json")
    if not os.path.exists(path):
        return
    plan = json.load(open(path))
    earlier = plan.get("max_batch", {})
    if earlier and "stopped" not in earlier and earlier.get("complete", True):
        return
    # A search stopped before its end (by hand, or by max_tries: complete False) resumes
    # from its tries (none compiled again).
    earlier_tries = earlier.get("tries", [])
    config = _recipe([a for a in ROWS[name][1] if a.startswith("--config.")])
    print(f"[{time.strftime('%H:%M:%S')}] {name}: searching the largest per-chip batch "
          f"(multiples of {step})", flush=True)
    with open(os.path.join(OUT, name, "search_log.txt"), "a") as log:
        def progress(line):
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
        plan["max_batch"] = planner.find_max_batch(config, plan["topology"],
                                                   run_shape(config.data), step=step,
                                                   progress=progress, known=plan,
                                                   earlier_tries=earlier_tries)
        plan["max_batch"]["command"] = f"python experiments/plan_pods.py rows --only {name}"
        if earlier_tries:
            why = earlier.get("stopped", "it reached its limit of compiles")
            plan["max_batch"]["resumed"] = (f"tries 1-{len(earlier_tries)} are those of a "
                                            f"search stopped earlier: {why}")
    report.write(plan, os.path.join(OUT, name))


def _recipe(overrides):
    """configs/imagenet.py with RECIPE's and the row's --config.FIELD=VALUE overrides, read
    as the command line reads them (`bt_jax.cli.load_recipe`)."""
    from bt_jax import cli  # pylint: disable=import-outside-toplevel
    return cli.load_recipe(os.path.join(ROOT, RECIPE[1]),
                           tuple(a for a in RECIPE if a.startswith("--config.")) + tuple(overrides))


def comm_table() -> list[dict]:
    """Bytes each path of the loss sends per step, read from compiled programs: the loss's
    value and gradient with respect to the two [N, D] embeddings, per device inside
    shard_map over the slice (as in the train step), D = 8192."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    # pylint: disable=import-outside-toplevel
    from bt_jax import losses, parallel
    from bt_jax.losses.barlow_twins import choose_correlation_path
    from bt_jax.plan import chips, compile as plan_compile
    devices, _ = chips.devices_for(COMM_TOPOLOGY)
    mesh = parallel.make_mesh(devices)
    d, rows = 8192, []
    for n in COMM_BATCHES:
        z = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=parallel.batch_sharded(mesh))
        row = {"global_batch": n, "d": d, "devices": mesh.size,
               "chosen": choose_correlation_path(n, d)}
        for path in ("gram", "direct"):
            def loss_grad(a, b, path=path):
                return jax.value_and_grad(lambda a, b: losses.barlow_twins_loss(
                    a, b, axis_name=parallel.BATCH_AXIS, path=path), argnums=(0, 1))(a, b)

            step = jax.jit(jax.shard_map(
                loss_grad, mesh=mesh, in_specs=(parallel.P(parallel.BATCH_AXIS),) * 2,
                out_specs=(parallel.P(), (parallel.P(parallel.BATCH_AXIS),) * 2)))
            _, stats = plan_compile.compile_program(f"loss {path} N={n}", step, z, z,
                                                    num_devices=mesh.size)
            summary = stats["collective_summary"]
            row[path] = {"bytes": summary["bytes"], "wire_bytes": summary["wire_bytes"],
                         "by_kind": summary["by_kind"], "flops": stats["flops"]}
        row["fewer_bytes"] = min(("gram", "direct"), key=lambda p: row[p]["wire_bytes"])
        rows.append(row)
    with open(os.path.join(OUT, "comm.json"), "w") as f:
        json.dump({"topology": COMM_TOPOLOGY, "rows": rows}, f, indent=1)
    return rows


def tables() -> str:
    """Markdown tables of the finished rows and comm.json."""
    lines = ["| row | topology | chips | batch/chip | dtype | memory GiB (HBM) | fits | "
             "collectives MB sent | est. pairs/s/chip | est. days, 1,000 epochs | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        path = os.path.join(OUT, name, "plan.json")
        if name in GPU_ROWS:
            continue
        if not os.path.exists(path):
            continue
        p = json.load(open(path))
        r, m, est = p["run"], p["memory"], p["estimate"]
        need = "?" if m["needed_bytes"] is None else f"{m['needed_bytes'] / 2 ** 30:.2f}"
        sent = sum(q["collective_summary"]["wire_bytes"] for q in p["programs"]) / 1e6
        lines.append(
            f"| {name} | {p['topology']} | {r['num_devices']} | {r['per_device_batch']} | "
            f"{r['dtype']} | {need} ({m['hbm_bytes'] / 2 ** 30:.0f}) | "
            f"{'yes' if m['fits'] else 'no'} | {sent:.0f} | "
            + (f"{est['pairs_per_second_per_chip']:.0f} | {est['days_per_1000_epochs']:.2f} | "
               if est else "- | - | ") + f"{p['compile_seconds']:.0f} |")
    lines += ["", gpu_table()]
    comm = os.path.join(OUT, "comm.json")
    if os.path.exists(comm):
        c = json.load(open(comm))
        lines += ["", f"Loss communication on {c['topology']} (D = 8192), MB sent per device "
                  "per step (ring estimate from the compiled HLO):", "",
                  "| global N | Gram path | direct path | chosen (2N <= D: Gram) | fewer bytes |",
                  "|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['global_batch']} | {r['gram']['wire_bytes'] / 1e6:.1f} | "
                         f"{r['direct']['wire_bytes'] / 1e6:.1f} | {r['chosen']} | "
                         f"{r['fewer_bytes']} |")
    return "\n".join(lines)


def gpu_table() -> str:
    """The GPU rows: memory against the share of the GPU JAX gives XLA, collectives within
    and between nodes, the estimate."""
    lines = ["| row | topology | GPUs | memory GiB (of usable) | fits | collectives: count, MB "
             "sent within a node | across nodes: count, MB sent | est. pairs/s/GPU | "
             "est. days, 1,000 epochs | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in GPU_ROWS:
        path = os.path.join(OUT, name, "plan.json")
        if not os.path.exists(path):
            continue
        p = json.load(open(path))
        r, m, est = p["run"], p["memory"], p["estimate"]
        sums = [q["collective_summary"] for q in p["programs"]]
        count = sum(x["count"] for x in sums)
        intra = sum(x["intra_node_wire_bytes"] for x in sums) / 1e6
        across = sum(x["inter_node_count"] for x in sums)
        inter = sum(x["inter_node_wire_bytes"] for x in sums) / 1e6
        lines.append(
            f"| {name} | {p['topology']} | {r['num_devices']} | "
            f"{m['needed_bytes'] / 2 ** 30:.2f} ({m['hbm_bytes'] / 2 ** 30:.1f}) | "
            f"{'yes' if m['fits'] else 'no'} | {count}, {intra:.0f} | {across}, {inter:.0f} | "
            f"{est['pairs_per_second_per_chip']:.0f} | {est['days_per_1000_epochs']:.2f} | "
            f"{p['compile_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("rows", "comm", "tables"))
    parser.add_argument("--only", nargs="*", default=())
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if args.part == "rows":
        run_rows(set(args.only))
    elif args.part == "comm":
        comm_table()
        print(tables())
    else:
        print(tables())


if __name__ == "__main__":
    main()
