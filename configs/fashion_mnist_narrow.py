"""Fashion-MNIST with a narrow network: the recipe of the tiny-scale ablations.

The first Fashion-MNIST recipe, kept as it was because experiments/ablations.py --scale
tiny runs it cut to 120 steps. Its 10 epochs scored below raw pixels (81.9% linear and
78.3% kNN against 84.5% and 81.8%, 52 min): configs/fashion_mnist.py is the recipe to train.

A narrow ResNet-18 (CIFAR stem, width 0.125: 64 features), projector 1024-1024-1024,
batch 256, 10 epochs (2,340 steps) with 1 warm-up epoch, the paper's LARS and learning
rates, crops of scale (0.2, 1), no hue or saturation jitter (grayscale images), blur sigma
0.1..1 px. Probes on the 60,000 training images, tested on the 10,000 test images, beside
a random encoder and raw pixels: the fast L-BFGS probe (results.json's linear_top1), the
paper's SGD probe shortened to 10 epochs, kNN (k = 200), the online probe, and fine-tuning
on 1% and 10% of the labels.

Reads the IDX files: `apt-get install -y dataset-fashion-mnist` (or --config.data.path=DIR;
without them, TFDS's fashion_mnist).
  python -m bt_jax.main --config configs/fashion_mnist_narrow.py --workdir runs/fmnist_narrow
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 10
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
    c.model.width = 0.125
    c.model.projector_dims = (1024, 1024, 1024)

    c.optim.warmup_epochs = 1
    c.checkpoint.every_steps = 500
    c.eval.linear_protocol = "linear_fast"   # results.json's linear_top1: L-BFGS on cached features
    c.eval.linear_sgd.epochs = 10      # the paper's SGD probe too, shortened for a CPU
    c.eval.linear_sgd.crop_scale = (0.2, 1.0)   # the SGD probe's and fine-tuning's views
    c.eval.finetune.crop_scale = (0.2, 1.0)
    c.monitor.diagnostics_every_steps = 500
    return c
