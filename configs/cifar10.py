"""CIFAR-10 with solo-learn's CIFAR recipe (`configs/common.py`):
ResNet-18 with the CIFAR stem, projector 2048-2048-2048, lambda 0.0051 with loss scale 0.1,
LARS (eta 0.02, wd 1e-4, trust ratio clipped at the learning rate), lr 0.3 not scaled by
batch, 10 warm-up epochs, batch 256, 1000 epochs, blur p 0 / 0, solarize p 0 / 0.2.

Reads the official python archive (cifar-10-batches-py/ or cifar-10-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html) in --config.data.path=DIR, without TensorFlow;
with on-device augmentation nothing but JAX is needed. Without the archive: TFDS
(`tfds build cifar10 --data_dir=DIR` where there is a network), or
--config.data.download=True.
  python -m bt_jax.main --config configs/cifar10.py --workdir runs/cifar10 \
      --config.data.path=DIR --config.data.augment_on=device
solo-learn's reported result (92.10% online linear) is a reference, not something this
recipe has reproduced here (no network for CIFAR, and 1000 epochs need an accelerator).
"""
from configs.common import cifar_recipe


def get_config():
    c = cifar_recipe()
    c.data.name = "cifar10"
    c.log_every_steps = 50
    return c
