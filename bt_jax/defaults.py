"""The default configuration every recipe in configs/ starts from, and its validation:
config.py's run sections with every component's own part, each checked by its component.

- the model: `models/factory.py` (config.model);
- each objective of `losses.OBJECTIVES`: Barlow Twins' at loss.*, the others' at
  loss.<kind>.* (loss.info_nce, loss.vicreg);
- each protocol of `evals.PROTOCOLS`: eval.<name>.* (eval.knn, eval.linear_fast,
  eval.linear_sgd, eval.finetune).
"""
from __future__ import annotations

import ml_collections

from bt_jax import config as config_lib
from bt_jax import evals, losses
from bt_jax.data.views import view_configs
from bt_jax.errors import ConfigError
from bt_jax.models import factory


def parts() -> list:
    """Every component's `config.Part`."""
    out = [config_lib.Part("model", factory.DEFAULTS, factory.check_settings)]
    for o in losses.OBJECTIVES.values():
        out.append(config_lib.Part("loss" + (f".{o.settings}" if o.settings else ""),
                                   o.defaults, o.check))
    for name in evals.PROTOCOLS:
        p = evals.get_protocol(name)
        out.append(config_lib.Part(f"eval.{name}", p.defaults, p.check))
    return out


def base_config() -> ml_collections.ConfigDict:
    """Paper defaults (ImageNet recipe); recipes in configs/ override what differs."""
    return _assembled(parts())


def _assembled(component_parts: list) -> ml_collections.ConfigDict:
    c = config_lib.assemble(component_parts)
    c.eval.protocols = evals.PROTOCOLS.names()
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field and the fix for values that cannot work: a
    field that does not exist (an old name names its new one), the run's own fields, then
    each component's, each check on its own sub-config."""
    component_parts = parts()
    config_lib.check_names(config, _assembled(component_parts))
    if not (isinstance(config.seed, int) and 0 <= config.seed < 2 ** 32):
        raise ConfigError(f"seed must be an integer in [0, 2**32); got {config.seed!r}.")
    config_lib.check_length(batch_size=config.batch_size, num_epochs=config.num_epochs,
                            num_steps=config.num_steps, log_every_steps=config.log_every_steps)
    config_lib.check_parts(config, config_lib.run_parts())
    factory.check_image_size(config.model, config.data.image_size)
    view_configs(config.data)   # the two views' augmentations, each checked as it is made
    if config.loss.kind not in losses.OBJECTIVES:
        raise ConfigError(f"loss.kind must be one of {sorted(losses.OBJECTIVES)}; got "
                          f"{config.loss.kind!r}.")
    check_protocol_choice(config.eval)
    config_lib.check_parts(config, component_parts)


def check_protocol_choice(e: ml_collections.ConfigDict) -> None:
    """config.eval's choice of protocols: each known, and the one linear_top1 reports
    (eval.linear_protocol) among them and set to run."""
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
