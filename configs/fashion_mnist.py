"""Fashion-MNIST within about an hour of a 2-core CPU, pretraining and evaluation.

The quick recipe (configs/fashion_mnist_quick.py: ResNet-18 with the "cifar_pool" stem at
width 0.5, 256 features; projector 1024-1024; batch 256; LARS with the paper's eta and
weight decay and 50x its learning rates, 10.0 / 0.24 x batch/256; augmentations on the
device: crops of scale 0.85-1, flip, brightness / contrast jitter, solarize on view B) for
6 epochs (1,404 steps on the 60,000 training images) with 0.6 of them as warm-up, chosen on
the validation split (experiments/fashion_mnist_tuning.py: 6 epochs in run f01, with the
crops of scale 0.5-1 of that time; crops of scale 0.85-1 in the one-epoch runs q17-q18).
The kNN monitor runs every 3 epochs; the last call's features are the evaluation's: the
fast L-BFGS probe and kNN (k = 200) on the 60,000 training images, tested on the 10,000
test images, beside the same encoder at random init and raw pixels. docs/results.md
(Fashion-MNIST) has its numbers.

Reads the IDX files: `apt-get install -y dataset-fashion-mnist` (or --config.data.path=DIR;
without them, TFDS's fashion_mnist).
  python -m bt_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist
The paper's SGD probe and fine-tuning on 1% / 10% of the labels, afterwards:
  python -m bt_jax.evaluate --workdir runs/fmnist --config configs/fashion_mnist.py \\
      --config.eval.linear_epochs=10 --config.eval.semi_fractions='(0.01,0.1)'
"""
from bt_jax.config import fashion_mnist_recipe


def get_config():
    c = fashion_mnist_recipe()
    c.num_epochs = 6
    c.log_every_steps = 50
    c.optim.warmup_epochs = 0.6    # a tenth of the run
    c.checkpoint.every_steps = 500
    c.eval.linear_crop_scale = (0.5, 1.0)
    c.eval.monitor_every_epochs = 3.0
    return c
