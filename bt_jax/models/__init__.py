"""Flax Linen models: torchvision-layout ResNets, the projector and BarlowTwins."""
from bt_jax.models.barlow_twins import BarlowTwins
from bt_jax.models.projector import Projector
from bt_jax.models.resnet import (BACKBONES, STEMS, BasicBlock, Bottleneck, ResNet, ResNet18,
                                  ResNet34, ResNet50, make_backbone)

__all__ = ["BarlowTwins", "Projector", "ResNet", "ResNet18", "ResNet34", "ResNet50",
           "BasicBlock", "Bottleneck", "BACKBONES", "STEMS", "make_backbone"]
