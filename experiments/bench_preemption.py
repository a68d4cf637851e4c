"""The per-step cost of the preemption check with several processes: the coordination
service's notice (bt_jax's PreemptionWatch) against the per-step gather of every process's
SIGTERM flag that it replaced, measured in one run.

  python experiments/bench_preemption.py --processes 2 \
      --out experiments/results/bench_preemption_cpu.json

Launches N processes on this machine (1 CPU device each, gloo collectives). Each runs the
same data-parallel step, an SGD update of a 2-layer MLP on its share of a global batch
with the gradients summed over the processes (bt_jax.parallel.data_parallel, as the
trainer's step), and polls after every step as the training loop does. Blocks of --steps
steps cycle through three polls: "none", "gather" (PreemptionWatch(coordinated=False):
every process's flag gathered after each step, a blocking collective and a device-to-host
read) and "coordinated" (PreemptionWatch(): multihost_utils.reached_preemption_sync_point,
a local check). A block's steps/s is its steps over its wall time, its last step waited
for; the table gives each poll's median over --blocks blocks and its ratio to "none".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

MODES = ("none", "gather", "coordinated")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args) -> None:
    """One process: the step, the polls, and (process 0) the JSON line of block times."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    jax.distributed.initialize(f"127.0.0.1:{args.port}", args.processes, args.process_id)
    from bt_jax import parallel  # pylint: disable=import-outside-toplevel
    from bt_jax.train.preemption import PreemptionWatch  # pylint: disable=import-outside-toplevel
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    weights = parallel.replicate(
        {"w1": rng.normal(size=(args.dim, args.dim)).astype(np.float32) / args.dim ** 0.5,
         "w2": rng.normal(size=(args.dim, args.dim)).astype(np.float32) / args.dim ** 0.5},
        mesh)
    batch = parallel.host_to_global(
        np.random.default_rng(1 + args.process_id).normal(
            size=(args.batch, args.dim)).astype(np.float32), mesh)

    def sgd_step(w, x):
        def loss(w):
            return jnp.mean(jnp.square(jnp.tanh(x @ w["w1"]) @ w["w2"]))
        grads = jax.lax.pmean(jax.grad(loss)(w), parallel.BATCH_AXIS)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, w, grads)

    step_fn = parallel.data_parallel(sgd_step, mesh, num_replicated_args=1)
    weights = jax.block_until_ready(step_fn(weights, batch))       # compiled
    polls = {"none": None, "gather": PreemptionWatch(coordinated=False),
             "coordinated": PreemptionWatch()}
    for watch in polls.values():
        if watch is not None:
            watch.__enter__()
    step, seconds = 0, {m: [] for m in MODES}
    for _ in range(args.blocks):
        for mode in MODES:
            start = time.perf_counter()
            for _ in range(args.steps):
                step += 1
                weights = step_fn(weights, batch)
                if polls[mode] is not None and polls[mode].requested(step):
                    raise SystemExit(f"unexpected preemption notice at step {step}")
            jax.block_until_ready(weights)
            seconds[mode].append(time.perf_counter() - start)
    if args.process_id == 0:
        print("RESULT " + json.dumps(seconds), flush=True)


def summarise(seconds: dict, steps: int) -> dict:
    """{mode: {"steps_per_s" (median over blocks), "ratio" (to "none"), "blocks"}}."""
    rates = {m: statistics.median(steps / s for s in seconds[m]) for m in MODES}
    return {m: {"steps_per_s": round(rates[m], 2), "ratio": round(rates[m] / rates["none"], 3),
                "blocks": len(seconds[m])} for m in MODES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50, help="steps per block")
    parser.add_argument("--blocks", type=int, default=7, help="blocks per poll")
    parser.add_argument("--batch", type=int, default=128, help="rows per process")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.processes < 2:
        raise SystemExit("error: --processes must be at least 2 (the check polls across "
                         "processes).")
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    common = [f"--{k}={v}" for k, v in (("processes", args.processes), ("steps", args.steps),
                                         ("blocks", args.blocks), ("batch", args.batch),
                                         ("dim", args.dim), ("port", port))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                               f"--process-id={i}", *common], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(args.processes)]
    outs = [p.communicate(timeout=1800) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed:\n" + "\n".join(err[-2000:] for _, err in outs))
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    seconds = json.loads(line[len("RESULT "):])
    import jax  # pylint: disable=import-outside-toplevel
    record = {"command": "python experiments/bench_preemption.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "processes": args.processes, "steps_per_block": args.steps,
              "batch_per_process": args.batch, "dim": args.dim,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "jax_version": jax.__version__, "date": time.strftime("%Y-%m-%d"),
              "summary": summarise(seconds, args.steps), "block_seconds": seconds}
    for mode, row in record["summary"].items():
        print(f"{mode:12s} {row['steps_per_s']:9.2f} steps/s  {row['ratio']:.3f}x of no poll "
              f"(median of {row['blocks']} blocks of {args.steps} steps)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
