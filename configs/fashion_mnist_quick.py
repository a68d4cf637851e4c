"""Fashion-MNIST on a budget of about 15 minutes of a 2-core CPU, pretraining and evaluation.

Measured with --config.data.validation_examples=10000 (50,000 training images): 15 min 35 s
on the project's 2-core AMD EPYC, validation linear 81.4% / kNN 74.5% against raw pixels'
85.6% / 81.8%: it does not yet beat pixels (see README.md, Fashion-MNIST).

ResNet-18 with the "cifar_pool" stem (3x3/1 conv + 2x2 max-pool: stages at 14, 7, 4, 2 px)
at width 0.25 (128 features), projector 1024-1024, batch 256, one epoch (234 steps at
about 150 pairs/s) with a fifth of an epoch of warm-up, the paper's LARS and learning rates
(chosen over solo-learn's CIFAR optimiser on the validation split), augmentations on the
device (crops of scale 0.25-1, flip, brightness / contrast jitter, solarize on view B; no
blur, hue or saturation for 28x28 grayscale images). Evaluation: the fast L-BFGS probe and
kNN (k = 200) on the 60,000 training images, tested on the 10,000 test images, beside the
same encoder at random init and raw pixels. The kNN monitor runs once, at the end, where
its features are the evaluation's.

    python -m bt_jax.main --config configs/fashion_mnist_quick.py --workdir runs/fmnist_quick

Tune with --config.data.validation_examples=10000 (experiments/fashion_mnist_tuning.py).
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 1
    c.log_every_steps = 25

    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    c.data.augment_on = "device"
    a = c.data.augment
    a.crop_scale = (0.25, 1.0)
    a.hue = 0.0                    # grayscale images: hue and saturation do nothing
    a.saturation = 0.0
    a.grayscale_prob = 0.0
    a.blur_prob = (0.0, 0.0)
    a.solarize_prob = (0.0, 0.2)

    c.model.backbone = "resnet18"
    c.model.stem = "cifar_pool"
    c.model.width = 0.25
    c.model.projector_dims = (1024, 1024)

    c.loss.lambd = 0.0051
    c.loss.scale = 1.0
    c.optim.lr_weights = 0.2       # the paper's LARS: x batch / 256
    c.optim.lr_biases = 0.0048
    c.optim.scale_lr_by_batch = True
    c.optim.weight_decay = 1.5e-6
    c.optim.eta = 0.001
    c.optim.warmup_epochs = 0.2

    c.checkpoint.every_steps = 100
    c.eval.linear_protocol = "fast"
    c.eval.linear_epochs = 0       # the SGD probe and fine-tuning: python -m bt_jax.evaluate
    c.eval.semi_fractions = ()
    c.eval.tsne_points = 0
    c.eval.diagnostics_every_steps = 0
    c.eval.monitor_every_epochs = 1.0
    return c
