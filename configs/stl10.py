"""STL-10: pretraining on its 105,000 96x96 images (train + unlabelled), probes on the
5,000 labelled training images and the 8,000 test images.

ResNet-18 with the ImageNet stem (96 px is large enough for the 7x7 stride-2 stem and
max-pool), the CIFAR recipe's projector, loss scale and LARS settings
(`configs/common.py`), 400 epochs, and the paper's augmentations at 96 px
(blur p 1.0 / 0.1, solarize p 0.0 / 0.2). Needs STL-10 prepared for TFDS
(`tfds build stl10 --data_dir=DIR`, then --config.data.path=DIR). Not run here (no network).
  python -m bt_jax.main --config configs/stl10.py --workdir runs/stl10
"""
from configs.common import cifar_recipe


def get_config():
    c = cifar_recipe()
    c.num_epochs = 400
    c.data.name = "stl10"
    c.data.image_size = 96
    c.data.augment.blur_prob = (1.0, 0.1)
    c.data.augment.solarize_prob = (0.0, 0.2)
    c.model.stem = "imagenet"
    c.checkpoint.every_steps = 2000
    return c
