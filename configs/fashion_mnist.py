"""Fashion-MNIST (70,000 28x28 images) with a CIFAR-stem ResNet-18: the CPU-affordable benchmark.

Needs the IDX files: `apt-get install -y dataset-fashion-mnist` (or --config.data.path=DIR).
  python -m bt_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 100
    c.log_every_steps = 50

    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    a = c.data.augment
    a.crop_scale = (0.2, 1.0)
    a.hue = 0.0                    # grayscale images: hue and saturation do nothing
    a.saturation = 0.0
    a.blur_sigma = (0.1, 1.0)      # sigma in pixels of the 28x28 image

    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 0.5
    c.model.projector_dims = (1024, 1024, 1024)

    c.optim.warmup_epochs = 10
    c.checkpoint.every_steps = 1000
    return c
