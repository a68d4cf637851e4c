"""python -m bt_jax.plan --config CONFIG --topology v5e:4x4 --out DIR [--max-batch]
[--config.FIELD=VALUE ...]

Compiles the trainer's own programs for the topology's chips with the real compiler
(libtpu for TPU slices, XLA:GPU for NVIDIA GPU nodes: h100:8, a100:4x8, ...; on any
machine) and writes DIR/plan.json and DIR/plan.md: memory per chip against its HBM, FLOPs
and bytes, every collective, compile time and a roofline estimate of the step. --topology local plans for this machine's devices and, there, also
measures the step, so the estimate's error is known. Mistakes end in one line (status 2).
"""
from __future__ import annotations

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
for _name in ("TPU_MIN_LOG_LEVEL", "TPU_STDERR_LOG_LEVEL"):   # libtpu's start-up noise
    os.environ.setdefault(_name, "3")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # compile-only: no chip to lock

from bt_jax.platforms import skip_absent_accelerators  # noqa: E402

skip_absent_accelerators()   # libtpu / CUDA plugin without their chip: no start-up errors

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax import cli, run_dir  # noqa: E402
from bt_jax.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file with get_config().",
                                lock_config=True)
flags.DEFINE_string("topology", None, "A TPU slice, CHIP:SHAPE (v4:2x2x4, v5e:4x4, "
                    "v5p:2x2x4, v6e:8x8, ...), NVIDIA GPU nodes, GPU:GPUS or "
                    "GPU:NODESxGPUS (h100:8 one node of 8, h100:4x8 four nodes; a100, "
                    "h200, b200), or 'local' for this machine's devices.")
flags.DEFINE_string("out", None, "Directory for plan.json and plan.md.")
flags.DEFINE_bool("max_batch", False, "Also find the largest per-chip batch that fits the "
                  "chip's memory (a search over compiles; each try is printed).")
flags.DEFINE_integer("batch_step", 8, "--max-batch's resolution: per-chip batches are "
                     "multiples of it.")
flags.DEFINE_integer("max_tries", 12, "--max-batch: at most this many compiles; a search "
                     "it stops reports the largest batch found as a lower bound.")
flags.DEFINE_integer("examples", 0, "Images per epoch, where data.name has no known size "
                     "(folders, tfds:<name>); overrides the known size otherwise.")
flags.DEFINE_integer("classes", 0, "Classes (the online probe's), with --examples.")
flags.DEFINE_integer("measure_steps", 5, "--topology local: steps to time (0: none).")
flags.mark_flags_as_required(["config", "topology", "out"])

OWN_FLAGS = ("max-batch", "batch-step", "max-tries", "measure-steps")


def normalise_argv(argv: list[str]) -> list[str]:
    """--max-batch -> --max_batch (and the planner's other hyphenated flags); the rest as
    given."""
    out = []
    for arg in argv:
        for name in OWN_FLAGS:
            for prefix in ("--", "--no"):
                if arg == prefix + name or arg.startswith(prefix + name + "="):
                    arg = prefix + name.replace("-", "_") + arg[len(prefix + name):]
        out.append(arg)
    return out


def _config_name() -> str:
    return config_flags.get_config_filename(FLAGS["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from bt_jax.plan import chips, planner, report  # pylint: disable=import-outside-toplevel
    from bt_jax.plan.compile import run_shape  # pylint: disable=import-outside-toplevel
    config, topology = FLAGS.config, FLAGS.topology
    command = "python -m bt_jax.plan " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        for name in ("batch_step", "max_tries"):
            if FLAGS[name].value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got "
                                  f"{FLAGS[name].value}.")
        run_dir.check_output_dir(FLAGS.out, "--out")   # before minutes of compiling
        chips.check_topology(topology)
        shape = run_shape(config.data, FLAGS.examples, FLAGS.classes)
        devices, chip = chips.devices_for(topology)
        print(f"Planning {_config_name()} on {topology}: {len(devices)} x {chip.name} "
              f"({devices[0].device_kind}), batch {config.batch_size} global.", flush=True)
        plan, run = planner.make_plan(config, topology, shape, command=command,
                                      config_name=_config_name(),
                                      progress=lambda s: print(s, flush=True),
                                      devices_and_chip=(devices, chip))
        if run is not None and topology == "local" and FLAGS.measure_steps > 0:
            print(f"  measuring {FLAGS.measure_steps} steps on this machine ...", flush=True)
            measured = planner.measure_step(run, FLAGS.measure_steps)
            measured["ratio_to_estimate"] = (measured["step_seconds"]
                                             / plan["estimate"]["step_seconds"])
            plan["measured"] = measured
        report.write(plan, FLAGS.out)   # the plan stands even if the search is cut short
        if FLAGS.max_batch:
            print("Searching for the largest per-chip batch that fits:", flush=True)
            plan["max_batch"] = planner.find_max_batch(
                config, topology, shape, step=FLAGS.batch_step, max_tries=FLAGS.max_tries,
                progress=lambda s: print(s, flush=True), known=plan,
                devices_and_chip=(devices, chip))
            found = plan["max_batch"]
            print(f"  largest per-chip batch that fits: {found['max_per_chip_batch']}"
                  + ("" if found["complete"] else
                     f" at least (the search stopped after --max-tries={FLAGS.max_tries} "
                     f"compiles with the bracket {report.open_bracket(found)} open)"),
                  flush=True)
        paths = report.write(plan, FLAGS.out)
        print(report.summary(plan) + f"\nWrote {paths[0]} and {paths[1]}.", flush=True)
        planner.check_fits(plan)
    except ConfigError as e:
        cli.fail(str(e))


def run() -> None:
    app.run(main, argv=normalise_argv(sys.argv), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
