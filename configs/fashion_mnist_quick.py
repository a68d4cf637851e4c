"""Fashion-MNIST in at most 15 minutes on a 2-core CPU: pretraining and its evaluation.

    python -m bt_jax.main --config configs/fashion_mnist_quick.py --workdir runs/fmnist_quick
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 2
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
    c.loss.scale = 0.1
    c.optim.lr_weights = 0.3
    c.optim.lr_biases = 0.3
    c.optim.scale_lr_by_batch = False
    c.optim.weight_decay = 1e-4
    c.optim.eta = 0.02
    c.optim.clip_trust_ratio = True
    c.optim.warmup_epochs = 0.2

    c.checkpoint.every_steps = 200
    c.eval.linear_protocol = "fast"
    c.eval.linear_epochs = 0
    c.eval.semi_fractions = ()
    c.eval.tsne_points = 0
    c.eval.diagnostics_every_steps = 0
    c.eval.monitor_every_epochs = 1.0
    return c
