"""Fashion-MNIST within about an hour of a 2-core CPU, pretraining and evaluation.

The quick recipe (configs/fashion_mnist_quick.py: ResNet-18 with the "cifar_pool" stem at
width 0.5, 256 features; projector 1024-1024; batch 256; LARS with the paper's eta and
weight decay and 50x its learning rates, 10.0 / 0.24 x batch/256; augmentations on the
device: crops of scale 0.5-1, flip, brightness / contrast jitter, solarize on view B) for
6 epochs (1,404 steps on the 60,000 training images) with 0.6 of them as warm-up, chosen on
the validation split (experiments/fashion_mnist_tuning.py, run f01). The kNN monitor runs
every 3 epochs; the last call's features are the evaluation's: the fast L-BFGS probe and
kNN (k = 200) on the 60,000 training images, tested on the 10,000 test images, beside the
same encoder at random init and raw pixels. README.md (Fashion-MNIST) has its numbers.

Reads the IDX files: `apt-get install -y dataset-fashion-mnist` (or --config.data.path=DIR;
without them, TFDS's fashion_mnist).
  python -m bt_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist
The paper's SGD probe and fine-tuning on 1% / 10% of the labels, afterwards:
  python -m bt_jax.evaluate --workdir runs/fmnist --config configs/fashion_mnist.py \\
      --config.eval.linear_epochs=10 --config.eval.semi_fractions='(0.01,0.1)'
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 6
    c.log_every_steps = 50

    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    c.data.augment_on = "device"
    a = c.data.augment
    a.crop_scale = (0.5, 1.0)      # q05: +1.2 linear / +1.6 kNN over (0.25, 1) on validation
    a.hue = 0.0                    # grayscale images: hue and saturation do nothing
    a.saturation = 0.0
    a.grayscale_prob = 0.0
    a.blur_prob = (0.0, 0.0)
    a.solarize_prob = (0.0, 0.2)

    c.model.backbone = "resnet18"
    c.model.stem = "cifar_pool"
    c.model.width = 0.5
    c.model.projector_dims = (1024, 1024)

    c.loss.lambd = 0.0051
    c.loss.scale = 1.0
    c.optim.lr_weights = 10.0      # 50x the paper's 0.2 / 0.0048 (x batch / 256)
    c.optim.lr_biases = 0.24
    c.optim.scale_lr_by_batch = True
    c.optim.weight_decay = 1.5e-6
    c.optim.eta = 0.001
    c.optim.warmup_epochs = 0.6    # a tenth of the run

    c.checkpoint.every_steps = 500
    c.eval.linear_protocol = "fast"
    c.eval.linear_epochs = 0       # the SGD probe and fine-tuning: python -m bt_jax.evaluate
    c.eval.linear_crop_scale = (0.5, 1.0)
    c.eval.semi_fractions = ()
    c.eval.tsne_points = 0
    c.eval.diagnostics_every_steps = 0
    c.eval.monitor_every_epochs = 3.0
    return c
