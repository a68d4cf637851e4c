"""CIFAR-100 with solo-learn's CIFAR recipe (`bt_jax.config.cifar_recipe`), as for CIFAR-10.

Needs CIFAR-100 prepared for TFDS (`tfds build cifar100 --data_dir=DIR`, then
--config.data.path=DIR), or --config.data.download=True.
  python -m bt_jax.main --config configs/cifar100.py --workdir runs/cifar100
"""
from bt_jax.config import cifar_recipe


def get_config():
    c = cifar_recipe()
    c.data.name = "cifar100"
    return c
