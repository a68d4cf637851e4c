"""Converts ResNet weights between PyTorch and bt_jax, in either direction:

  python -m bt_jax.convert SRC DST [--arch resnet50] [--stem cifar] [--no-projector]

The format of each file is chosen by its extension (`bt_jax.io.weights`): .pth / .pt /
.ckpt (a torch.save'd state dict, FAIR's or solo-learn's checkpoint; needs torch),
.safetensors (needs no torch), .msgpack (bt_jax's backbone.msgpack). --arch is inferred
from the weights when left out. A projector (FAIR's checkpoint.pth) is carried into .pth /
.safetensors as FAIR names it; .msgpack holds the backbone alone. Mistakes end in one
line (status 2).
"""
from __future__ import annotations

import os
import sys

from absl import flags

from bt_jax import cli
from bt_jax.errors import ConfigError
from bt_jax.io import interop, run_dir, storage, weights


def define(values: flags.FlagValues, argv: list[str]) -> None:
    """The converter's flags (SRC and DST are positional)."""
    del argv
    flags.DEFINE_enum("arch", None, interop.ARCHS, "The ResNet (default: inferred from the "
                      "weights).", flag_values=values)
    flags.DEFINE_enum("stem", None, ("imagenet", "cifar", "cifar_pool"), "The stem (default: "
                      "inferred; cifar_pool must be given).", flag_values=values)
    flags.DEFINE_bool("projector", True, "Carry the projector where SRC holds one; "
                      "--no-projector converts the backbone alone (e.g. solo-learn's "
                      "checkpoints, whose projector has biases).", flag_values=values)


def _same_file(a: str, b: str) -> bool:
    if storage.is_remote(a) or storage.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def run(values: flags.FlagValues, args: list[str]) -> int:
    """Converts SRC to DST (args); the exit status."""
    if len(args) != 2:
        raise ConfigError(f"pass SRC and DST (two paths); got {len(args)} argument(s): "
                          "python -m bt_jax.convert SRC DST [--arch ...] [--no-projector].")
    src, dst = args
    if _same_file(src, dst):
        raise ConfigError("SRC and DST are the same file: choose another DST.")
    weights.file_format(dst)
    run_dir.check_output_file(dst, "DST")
    variables, arch = weights.read_variables(src, values.arch,
                                             projector=None if values.projector else False,
                                             stem=values.stem)
    weights.write_variables(dst, variables, arch, projector=values.projector)
    part = "backbone and projector" if "projector" in variables["params"] else "backbone"
    print(f"Wrote {dst!r}: the {arch} {part} of {src!r}.")
    return 0


def main(argv: list[str]) -> int:
    """`python -m bt_jax.convert` with argv (the arguments after the program's name); the
    exit status."""
    return cli.main(run, define, __doc__, ["bt_jax.convert"] + list(argv))


if __name__ == "__main__":
    from bt_jax.platforms import skip_absent_accelerators  # noqa: E402
    skip_absent_accelerators()   # before JAX starts a backend: no chip, no start-up noise
    sys.exit(cli.main(run, define, __doc__))
