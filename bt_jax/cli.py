"""The one command-line convention of bt_jax's entry points (`bt_jax.main`,
`bt_jax.evaluate`, `bt_jax.convert`, `bt_jax.plan`):

- absl flags, each entry point's own set (`define(values, argv)` on a fresh
  `flags.FlagValues`): --name=value or --name value, --noname for a boolean, hyphens
  accepted for underscores (--max-batch, --no-projector);
- --config FILE (a recipe with get_config()) and --config.FIELD=VALUE overrides, where a
  config applies;
- --help (or -h) prints the entry point's docstring and its flags, exit status 0;
- every mistake, on the command line or in the config, is one line on stderr naming the
  problem and the fix, exit status 2, before anything is written.

An entry point is `define(values, argv)` and `run(values, args) -> exit status`;
`sys.exit(cli.main(run, define, __doc__))` runs it.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional

from absl import flags

from bt_jax import config as config_lib
from bt_jax.errors import ConfigError

HELP = ("--help", "-h", "-help", "--helpfull", "--helpshort")


def normalise(argv: list[str]) -> list[str]:
    """Hyphenated flag names as absl's underscored ones: --max-batch=8 -> --max_batch=8,
    --no-projector -> --noprojector. --config.FIELD overrides and values stay as given."""
    out = [argv[0]] if argv else []
    for arg in argv[1:]:
        if arg.startswith("--") and not arg.startswith("--config"):
            name, eq, value = arg[2:].partition("=")
            if name.startswith("no-"):
                name = "no" + name[3:]
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def help_text(doc: str, values: flags.FlagValues) -> str:
    """The entry point's docstring, then each of its flags with its help and default."""
    lines = [doc.strip(), "", "Flags:"]
    for name in sorted(set(values)):
        if "." in name:
            continue
        flag = values[name]
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def parse(argv: list[str], define: Callable[[flags.FlagValues, list[str]], None]
          ) -> tuple[flags.FlagValues, list[str]]:
    """(the entry point's flags parsed, the positional arguments after the program's name).

    Raises:
      ConfigError: one line for any mistake (an unknown flag or config field, a field that
        moved, a recipe that is not there or does not load, a bare number for a tuple).
    """
    argv = normalise(argv)
    missing = missing_config_file(argv)
    if missing:
        raise ConfigError(f"--config {missing!r}: no such file. Recipes are Python files "
                          "with get_config(), e.g. configs/digits.py, "
                          "configs/fashion_mnist.py, configs/cifar10.py.")
    for name in override_names(argv[1:]):
        if name in config_lib.RENAMED:
            raise ConfigError(f"--config.{name}: {config_lib.renamed_message(name)}")
    recipe = config_file(argv)
    if recipe:
        make_recipe_parts_importable(recipe)
        check_recipe(recipe)
    values = flags.FlagValues()
    define(values, argv)
    try:
        rest = values(argv)
        values.validate_all_flags()
    except (AttributeError, KeyError) as e:
        raise ConfigError(unknown_field_message(argv, e)) from None
    except flags.Error as e:
        raise ConfigError(f"{str(e).splitlines()[0]}. Run with --help for the flags.") from None
    if "config" in values and values.config is not None:
        check_tuple_overrides(argv[1:], values.config)
    return values, rest[1:]


def main(run: Callable[[flags.FlagValues, list[str]], Optional[int]],
         define: Callable[[flags.FlagValues, list[str]], None], doc: str,
         argv: Optional[list[str]] = None) -> int:
    """Parses argv (default sys.argv) with `define`'s flags and calls run(values, args);
    returns the exit status: run's (None: 0), 0 after --help, 2 after one line for a
    mistake (a ConfigError or FileNotFoundError from parsing or from run)."""
    from absl import logging  # pylint: disable=import-outside-toplevel
    argv = list(sys.argv if argv is None else argv)
    try:
        if any(a in HELP for a in argv[1:]):
            values = flags.FlagValues()
            define(values, normalise([a for a in argv if a not in HELP]))
            print(help_text(doc, values))
            return 0
        values, args = parse(argv, define)
        flags.FLAGS.mark_as_parsed()   # absl's own logging: no "before flag parsing" line
        logging.set_verbosity(logging.WARNING)   # Orbax logs every save and read at INFO
        status = run(values, args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)


def define_config(values: flags.FlagValues, argv: list[str], help_text_: str,
                  required: bool = True) -> None:
    """--config FILE (a recipe's get_config()) with its --config.FIELD=VALUE overrides."""
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    config_flags.DEFINE_config_file("config", None, help_text_, flag_values=values,
                                    lock_config=True, sys_argv=argv)
    if required:
        flags.mark_flag_as_required("config", flag_values=values)


def unknown_field_message(argv: list[str], e: Exception) -> str:
    """One line for an override of a field the config does not have."""
    overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    hint = re.sub(r"\s+", " ", str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'"))
    return (f"unknown config field among {overrides} ({hint}). Fields are listed in "
            "bt_jax/config/schema.py (the run's) and beside each component "
            "(bt_jax/config/__init__.py lists them); a recipe may only override fields that "
            "exist.")


def flag_value(argv: list[str], name: str) -> str:
    """The value of --NAME (as "--NAME VALUE" or "--NAME=VALUE"), or "" where absent."""
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith((f"--{name}=", f"-{name}=")):
            return arg.split("=", 1)[1]
    return ""


def config_file(argv: list[str]) -> str:
    """The --config argument (a recipe's path), or "" where there is none."""
    return flag_value(argv, "config")


def missing_config_file(argv: list[str]) -> str:
    """The --config argument's path if that file does not exist, else ""."""
    path = config_file(argv)
    return "" if not path or os.path.isfile(path.split(":")[0]) else path


def check_recipe(path: str) -> None:
    """Raises ConfigError (one line) unless the recipe at path (FILE or FILE:ARG) is Python
    that defines get_config() returning a ConfigDict (`read_recipe`)."""
    read_recipe(path)


def read_recipe(path: str):
    """The ConfigDict of the recipe at path (FILE or FILE:ARG), as its get_config() returns
    it. ConfigError (one line) unless it is Python that defines get_config() returning a
    ConfigDict: a syntax error names its line, an error raised by get_config() its type
    and message."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel
    file, _, arg = path.partition(":")
    try:
        with open(file) as f:
            compile(f.read(), file, "exec")
    except SyntaxError as e:
        raise ConfigError(f"--config {file!r}, line {e.lineno}: {e.msg}. Fix the recipe's "
                          "Python (python -m py_compile FILE shows where).") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {file!r} cannot be read ({e}).") from None
    spec = importlib.util.spec_from_file_location("_bt_jax_checked_recipe", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigError(f"--config {file!r} defines no get_config(): a recipe is a Python "
                              "file whose get_config() returns the config, e.g. "
                              "configs/digits.py.")
        config = get_config(arg) if arg else get_config()
    except ConfigError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # a recipe can raise anything
        line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ConfigError(f"--config {file!r}: loading it raised {type(e).__name__}"
                          + (f": {line}" if line else "") + ". Fix the recipe.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {file!r}: get_config() returned an object "
                          f"of type {type(config).__name__}; it must return an "
                          "ml_collections.ConfigDict (start from "
                          "bt_jax.config.base_config()).")
    return config


def override_names(args: list[str]) -> list[str]:
    """The dotted field names of the --config.FIELD=VALUE (or --config.FIELD VALUE) overrides."""
    return [arg[2 + len("config."):].partition("=")[0] for arg in args
            if arg.startswith("--config.")]


def make_recipe_parts_importable(recipe_path: str) -> None:
    """Puts the folder above a recipe's on the import path, so that a recipe in configs/
    can import the parts the recipes share (`from configs.common import cifar_recipe`)
    wherever the command runs from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(recipe_path.split(":")[0])))
    if root not in sys.path:
        sys.path.insert(0, root)


def load_recipe(path: str, overrides: tuple[str, ...] = ()):
    """A recipe's get_config() with --config.FIELD=VALUE overrides applied as the command
    line applies them (absl's parser): for scripts that build configs the way
    `python -m bt_jax.main` does. Bad input raises ConfigError (one line)."""
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    for name in override_names(list(overrides)):
        if name in config_lib.RENAMED:
            raise ConfigError(f"--config.{name}: {config_lib.renamed_message(name)}")
    if not os.path.isfile(path.split(":")[0]):
        raise ConfigError(f"--config {path!r}: no such file.")
    make_recipe_parts_importable(path)
    check_recipe(path)
    argv = ["load_recipe", f"--config={path}"] + list(overrides)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "recipe", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:
        raise ConfigError(unknown_field_message(argv, e)) from None
    except flags.Error as e:
        raise ConfigError(f"{str(e).splitlines()[0][:300]}") from None
    check_tuple_overrides(list(overrides), values.config)
    return values.config


def check_tuple_overrides(args: list[str], config) -> None:
    """ConfigError for a bare number given to a tuple field (--config.model.projector_dims=512),
    which ml_collections would silently read as the one-element tuple (512,)."""
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
            raise ConfigError(f"--config.{name}={value}: {name} is a tuple. Write "
                              f"--config.{name}='({value},)' for one element, or list them, "
                              f"e.g. --config.{name}='({value},{value},{value})'.")
