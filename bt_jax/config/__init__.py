"""The config in one place: its schema, its assembly from the components' parts, and its
validation (`base_config`, `validate`).

- schema.py: the run's own sections (`run_sections`: length, data and augmentations,
  optimiser, checkpoints, profile, monitors, what every evaluation shares) with their
  checks, and `Part` / `assemble`, how a component's settings join them;
- legacy.py: fields that moved, one line naming the new name, and old config.json files
  read in today's layout;
- tree.py: a config as dotted names (`flatten`, `diff`).
Each component declares its own part beside its code and checks its own sub-config:
- the model: `models/factory.py` (config.model);
- each objective of `losses.OBJECTIVES`: Barlow Twins' at loss.*, the others' at
  loss.<kind>.* (loss.info_nce, loss.vicreg);
- each protocol of `evals.PROTOCOLS`: eval.<name>.* (eval.knn, eval.linear_fast,
  eval.linear_sgd, eval.finetune).
Recipes in configs/ start from `base_config()`.
"""
from __future__ import annotations

import ml_collections

from bt_jax.config.legacy import RENAMED, renamed_message, translate_saved
from bt_jax.config.schema import (Part, assemble, check_length, check_names, check_parts,
                                  run_parts, run_sections)
from bt_jax.config.tree import diff, flatten, sub_config, unflatten
from bt_jax.errors import ConfigError

__all__ = ["ConfigError", "Part", "RENAMED", "assemble", "base_config", "check_names",
           "check_parts", "diff", "flatten", "parts", "renamed_message", "run_parts",
           "run_sections", "sub_config", "translate_saved", "unflatten", "validate"]


# The components are imported where they are used: `bt_jax.cli` reads the legacy names
# and checks flags before any of them (and JAX) is loaded.


def parts() -> list:
    """Every component's `config.Part`."""
    from bt_jax import evals, losses  # pylint: disable=import-outside-toplevel
    from bt_jax.models import factory  # pylint: disable=import-outside-toplevel
    out = [Part("model", factory.DEFAULTS, factory.check_settings)]
    for o in losses.OBJECTIVES.values():
        out.append(Part("loss" + (f".{o.settings}" if o.settings else ""), o.defaults,
                        o.check))
    for name in evals.PROTOCOLS:
        p = evals.get_protocol(name)
        out.append(Part(f"eval.{name}", p.defaults, p.check))
    return out


def base_config() -> ml_collections.ConfigDict:
    """Paper defaults (ImageNet recipe); recipes in configs/ override what differs."""
    return _assembled(parts())


def _assembled(component_parts: list) -> ml_collections.ConfigDict:
    from bt_jax import evals  # pylint: disable=import-outside-toplevel
    c = assemble(component_parts)
    c.eval.protocols = evals.BUILT_IN   # a protocol a user registers runs where named
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field and the fix for values that cannot work: a
    field that does not exist (an old name names its new one), the run's own fields, then
    each component's, each check on its own sub-config."""
    from bt_jax import losses  # pylint: disable=import-outside-toplevel
    from bt_jax.data.views import view_configs  # pylint: disable=import-outside-toplevel
    from bt_jax.models import factory  # pylint: disable=import-outside-toplevel
    component_parts = parts()
    check_names(config, _assembled(component_parts))
    if not (isinstance(config.seed, int) and 0 <= config.seed < 2 ** 32):
        raise ConfigError(f"seed must be an integer in [0, 2**32); got {config.seed!r}.")
    check_length(batch_size=config.batch_size, num_epochs=config.num_epochs,
                 num_steps=config.num_steps, log_every_steps=config.log_every_steps)
    check_parts(config, run_parts())
    factory.check_image_size(config.model, config.data.image_size)
    view_configs(config.data)   # the two views' augmentations, each checked as it is made
    if config.loss.kind not in losses.OBJECTIVES:
        raise ConfigError(f"loss.kind must be one of {sorted(losses.OBJECTIVES)}; got "
                          f"{config.loss.kind!r}.")
    check_protocol_choice(config.eval)
    check_parts(config, component_parts)


def check_protocol_choice(e: ml_collections.ConfigDict) -> None:
    """config.eval's choice of protocols: each known, and the one linear_top1 reports
    (eval.linear_protocol) among them and set to run."""
    from bt_jax import evals  # pylint: disable=import-outside-toplevel
    unknown = [p for p in e.protocols if p not in evals.PROTOCOLS]
    if unknown:
        raise ConfigError(f"eval.protocols: unknown protocol(s) {unknown}; choose from "
                          f"{evals.PROTOCOLS.names()}.")
    if e.linear_protocol not in ("linear_fast", "linear_sgd"):
        raise ConfigError("eval.linear_protocol must be 'linear_fast' or 'linear_sgd'; got "
                          f"{e.linear_protocol!r}.")
    if e.linear_protocol not in e.protocols:
        raise ConfigError(
            f"eval.linear_protocol={e.linear_protocol!r} reports a protocol that "
            f"eval.protocols={tuple(e.protocols)} leaves out: add it, or change "
            "eval.linear_protocol.")
    if e.linear_protocol == "linear_sgd" and e.linear_sgd.epochs == 0:
        raise ConfigError("eval.linear_protocol='linear_sgd' needs eval.linear_sgd.epochs > 0 "
                          "(or set eval.linear_protocol='linear_fast').")


_MOVED = {"cifar_recipe": "configs/common.py's cifar_recipe",
          "fashion_mnist_recipe": "configs/common.py's fashion_mnist_recipe"}


def __getattr__(name: str):
    if name in _MOVED:
        raise ImportError(f"bt_jax.config.{name} is now {_MOVED[name]}.")
    raise AttributeError(f"module 'bt_jax.config' has no attribute {name!r}")
