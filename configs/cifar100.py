"""CIFAR-100 with solo-learn's CIFAR recipe (`configs/common.py`), as for CIFAR-10.

Reads the official python archive (cifar-100-python/ or cifar-100-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html) in --config.data.path=DIR, without TensorFlow;
with on-device augmentation nothing but JAX is needed. Without the archive: TFDS
(`tfds build cifar100 --data_dir=DIR`), or --config.data.download=True.
  python -m bt_jax.main --config configs/cifar100.py --workdir runs/cifar100 \
      --config.data.path=DIR --config.data.augment_on=device
"""
from configs.common import cifar_recipe


def get_config():
    c = cifar_recipe()
    c.data.name = "cifar100"
    return c
