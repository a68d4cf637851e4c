"""Flax Linen models: torchvision-layout ResNets, the projector and BarlowTwins; the
backbones by name in `backbones.BACKBONES`."""
from bt_jax.models.backbones import BACKBONES, make_backbone
from bt_jax.models.barlow_twins import BarlowTwins
from bt_jax.models.projector import Projector
from bt_jax.models.resnet import (STEMS, BasicBlock, Bottleneck, ResNet, ResNet18, ResNet34,
                                  ResNet50)

__all__ = ["BarlowTwins", "Projector", "ResNet", "ResNet18", "ResNet34", "ResNet50",
           "BasicBlock", "Bottleneck", "BACKBONES", "STEMS", "make_backbone"]
