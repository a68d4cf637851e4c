"""What the command-line entry points share (`bt_jax.main`, `bt_jax.plan`): absl's
parsing of --config and its --config.FIELD overrides, with every mistake reported in one
line (exit status 2) instead of a traceback."""
from __future__ import annotations

import os
import re
import sys

from absl import flags

FLAGS = flags.FLAGS


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with unknown config fields reported in one line."""
    missing = missing_config_file(argv)
    if missing:
        fail(f"--config {missing!r}: no such file. Recipes are Python files with "
             "get_config(), e.g. configs/digits.py, configs/fashion_mnist.py, "
             "configs/cifar10.py.")
    try:
        rest = FLAGS(argv)
    except (AttributeError, KeyError) as e:
        overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
        hint = re.sub(r"\s+", " ", str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'"))
        fail(f"unknown config field among {overrides} ({hint}). Fields are listed in "
             "bt_jax/config.py; a recipe may only override fields that exist.")
    except flags.Error as e:
        fail(f"{e}. Run with --helpfull for the flags.")
    check_tuple_overrides(argv[1:], FLAGS.config)
    return rest


def missing_config_file(argv: list[str]) -> str:
    """The --config argument's path if that file does not exist, else ""."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1]
        else:
            continue
        return "" if os.path.isfile(path.split(":")[0]) else path
    return ""


def check_tuple_overrides(args: list[str], config) -> None:
    """Refuses a bare number for a tuple field (--config.model.projector_dims=512), which
    ml_collections would silently read as the one-element tuple (512,)."""
    for i, arg in enumerate(args):
        if not arg.startswith("--config."):
            continue
        name, eq, value = arg[2 + len("config."):].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]     # the "--config.field value" form
        node = config
        try:
            for part in name.split("."):
                node = node[part]
        except (KeyError, TypeError, AttributeError):
            continue
        if isinstance(node, tuple) and value.strip() and not any(c in value for c in "(),[]"):
            fail(f"--config.{name}={value}: {name} is a tuple. Write "
                  f"--config.{name}='({value},)' for one element, or list them, e.g. "
                  f"--config.{name}='({value},{value},{value})'.")
