"""python -m bt_jax.plan --config CONFIG --topology v5e:4x4 --out DIR [--max-batch]
[--config.FIELD=VALUE ...]

Compiles the trainer's own programs for the topology's chips with the real compiler
(libtpu for TPU slices, XLA:GPU for NVIDIA GPU nodes: h100:8, a100:4x8, ...; on any
machine) and writes DIR/plan.json and DIR/plan.md: memory per chip against its HBM, FLOPs
and bytes, every collective, compile time and a roofline estimate of the step. --topology local plans for this machine's
devices and, there, also measures the step, so the estimate's error is known. Mistakes end in one line (status 2).
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

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax.io import run_dir
from bt_jax import cli  # noqa: E402
from bt_jax.errors import ConfigError  # noqa: E402


def define(values: flags.FlagValues, argv: list[str]) -> None:
    """The planner's flags."""
    cli.define_config(values, argv, "Path to a config file with get_config().")
    flags.DEFINE_string("topology", None, "A TPU slice, CHIP:SHAPE (v4:2x2x4, v5e:4x4, "
                        "v5p:2x2x4, v6e:8x8, ...), NVIDIA GPU nodes, GPU:GPUS or "
                        "GPU:NODESxGPUS (h100:8 one node of 8, h100:4x8 four nodes; a100, "
                        "h200, b200), or 'local' for this machine's devices.",
                        flag_values=values, required=True)
    flags.DEFINE_string("out", None, "Directory for plan.json and plan.md.", flag_values=values,
                        required=True)
    flags.DEFINE_bool("max_batch", False, "Also find the largest per-chip batch that fits "
                      "the chip's memory (a search over compiles; each try is printed).",
                      flag_values=values)
    flags.DEFINE_integer("batch_step", 8, "--max-batch's resolution: per-chip batches are "
                         "multiples of it.", flag_values=values)
    flags.DEFINE_integer("max_tries", 12, "--max-batch: at most this many compiles; a search "
                         "it stops reports the largest batch found as a lower bound.",
                         flag_values=values)
    flags.DEFINE_integer("examples", 0, "Images per epoch, where data.name has no known size "
                         "(folders, tfds:<name>); overrides the known size otherwise.",
                         flag_values=values)
    flags.DEFINE_integer("classes", 0, "Classes (the online probe's), with --examples.",
                         flag_values=values)
    flags.DEFINE_integer("measure_steps", 5, "--topology local: steps to time (0: none).",
                         flag_values=values)


def _config_name(values: flags.FlagValues) -> str:
    return config_flags.get_config_filename(values["config"])


def run(values: flags.FlagValues, args: list[str]) -> None:
    """Plans values.config on values.topology into values.out."""
    if args:
        raise ConfigError(f"unexpected arguments {args}: every setting is a flag "
                          "(--config, --topology, --out, ...).")
    from bt_jax.plan import chips, planner, report  # pylint: disable=import-outside-toplevel
    from bt_jax.plan.compile import run_shape  # pylint: disable=import-outside-toplevel
    config, topology = values.config, values.topology
    command = "python -m bt_jax.plan " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for name in ("batch_step", "max_tries"):
        if values[name].value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got "
                              f"{values[name].value}.")
    run_dir.check_output_dir(values.out, "--out")   # before minutes of compiling
    chips.check_topology(topology)
    shape = run_shape(config.data, values.examples, values.classes)
    devices, chip = chips.devices_for(topology)
    print(f"Planning {_config_name(values)} on {topology}: {len(devices)} x {chip.name} "
          f"({devices[0].device_kind}), batch {config.batch_size} global.", flush=True)
    plan, compiled = planner.make_plan(config, topology, shape, command=command,
                                       config_name=_config_name(values),
                                       progress=lambda s: print(s, flush=True),
                                       devices_and_chip=(devices, chip))
    if compiled is not None and topology == "local" and values.measure_steps > 0:
        print(f"  measuring {values.measure_steps} steps on this machine ...", flush=True)
        measured = planner.measure_step(compiled, values.measure_steps)
        measured["ratio_to_estimate"] = (measured["step_seconds"]
                                         / plan["estimate"]["step_seconds"])
        plan["measured"] = measured
    report.write(plan, values.out)   # the plan stands even if the search is cut short
    if values.max_batch:
        print("Searching for the largest per-chip batch that fits:", flush=True)
        plan["max_batch"] = planner.find_max_batch(
            config, topology, shape, step=values.batch_step, max_tries=values.max_tries,
            progress=lambda s: print(s, flush=True), known=plan,
            devices_and_chip=(devices, chip))
        found = plan["max_batch"]
        print(f"  largest per-chip batch that fits: {found['max_per_chip_batch']}"
              + ("" if found["complete"] else
                 f" at least (the search stopped after --max-tries={values.max_tries} "
                 f"compiles with the bracket {report.open_bracket(found)} open)"),
              flush=True)
    paths = report.write(plan, values.out)
    print(report.summary(plan) + f"\nWrote {paths[0]} and {paths[1]}.", flush=True)
    planner.check_fits(plan)


if __name__ == "__main__":
    sys.exit(cli.main(run, define, __doc__))
