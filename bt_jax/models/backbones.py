"""The backbones config.model.backbone names: one line each in BACKBONES
(`bt_jax.registry`); a new one is a module defining the Linen module's constructor and
its line here."""
from __future__ import annotations

from bt_jax.registry import Registry

BACKBONES = Registry("backbone", "model.backbone", {
    "resnet18": "bt_jax.models.resnet:ResNet18",
    "resnet34": "bt_jax.models.resnet:ResNet34",
    "resnet50": "bt_jax.models.resnet:ResNet50",
}, home="bt_jax/models/backbones.py")


def make_backbone(name: str, **kwargs):
    """The backbone registered as `name` (config.model.backbone), built with kwargs
    (stem, width, dtype, ...); ConfigError (a ValueError) for an unknown name or a
    width that is not positive."""
    constructor = BACKBONES.get(name)
    if "width" in kwargs and not kwargs["width"] > 0:
        raise ValueError(f"width must be positive (1.0: the standard network; config field "
                         f"model.width); got {kwargs['width']}.")
    return constructor(**kwargs)
