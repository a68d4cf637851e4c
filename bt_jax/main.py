"""Trains, checkpoints and evaluates:

  python -m bt_jax.main --config configs/digits.py --workdir runs/demo

Any config field can be overridden: --config.batch_size=512 --config.model.width=0.5.
Mistakes in the command line or the config end with one line that names the problem
(exit status 2), not a traceback. SIGTERM (a scheduler's preemption) saves a checkpoint of
the step reached and exits with status 143; rerunning the command resumes from it.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bt_jax.platforms import skip_absent_accelerators  # noqa: E402

skip_absent_accelerators()   # libtpu / CUDA plugin without their chip: no start-up errors

from absl import flags  # noqa: E402

from bt_jax import cli  # noqa: E402

PREEMPTED_EXIT_STATUS = 143   # 128 + SIGTERM, as a shell reports a process it terminated


def define(values: flags.FlagValues, argv: list[str]) -> None:
    """The trainer's flags."""
    cli.define_config(values, argv, "Path to a config file with get_config().")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.",
                        flag_values=values, required=True)
    flags.DEFINE_bool("jax_distributed", False,
                      "Call jax.distributed.initialize() first: one process per host of a GPU "
                      "cluster or TPU pod. What the three flags below leave unset comes from "
                      "the cluster's environment (SLURM, TPU pods, Open MPI, Kubernetes; "
                      "JAX_COORDINATOR_ADDRESS for the address).", flag_values=values)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "Number of processes.", flag_values=values)
    flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.",
                         flag_values=values)
    flags.DEFINE_integer("heartbeat_timeout_seconds", 100,
                         "After this long without a heartbeat from a process, the others stop "
                         "with an error instead of waiting for it forever.", flag_values=values)


def describe_config(values: flags.FlagValues) -> str:
    """"Config: FILE" and the command line's changes to that recipe, one per line."""
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    from bt_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    path = config_flags.get_config_filename(values["config"])
    changes = config_lib.diff(cli.read_recipe(path), values.config)
    lines = [f"Config: {path}" + ("" if changes else " (the recipe as it is)")]
    return "\n".join(lines + [f"  {line}" for line in changes])


def run(values: flags.FlagValues, args: list[str]) -> int:
    """Trains and evaluates values.config in values.workdir; the exit status."""
    from bt_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
    if args:
        raise ConfigError(f"unexpected arguments {args}: every setting is a flag "
                          "(--config, --workdir, --config.FIELD=VALUE).")
    if values.jax_distributed:
        import jax  # pylint: disable=import-outside-toplevel
        try:
            jax.distributed.initialize(
                coordinator_address=values.coordinator_address,
                num_processes=values.num_processes, process_id=values.process_id,
                heartbeat_timeout_seconds=values.heartbeat_timeout_seconds)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ConfigError(
                f"jax.distributed.initialize failed: {e}. Outside SLURM / TPU pods / MPI, "
                "pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I."
            ) from None
    from bt_jax.io import checkpoint
    from bt_jax import train  # pylint: disable=import-outside-toplevel
    print(describe_config(values), flush=True)
    try:
        train.train_and_evaluate(values.config, values.workdir)
    except train.Preempted as e:
        print(str(e), file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    except (FloatingPointError, checkpoint.SaveError) as e:
        raise ConfigError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(cli.main(run, define, __doc__))
