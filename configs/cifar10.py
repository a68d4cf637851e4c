"""solo-learn's CIFAR-10 recipe (DESIGN.md): ResNet-18 with the CIFAR stem, projector
2048-2048-2048, lambda 0.0051 with loss scale 0.1, LARS (eta 0.02, wd 1e-4), lr 0.3 not
scaled by batch, 10 warm-up epochs, batch 256, 1000 epochs, blur p 0 / 0, solarize 0 / 0.2.

Needs CIFAR-10 prepared for TFDS (`tfds build cifar10 --data_dir=DIR` where there is a
network; then --config.data.path=DIR), or --config.data.download=True.
  python -m bt_jax.main --config configs/cifar10.py --workdir runs/cifar10
solo-learn's clipping of the LARS learning rate is not implemented; its reported result
(92.10% online linear) is a reference, not something this recipe has reproduced.
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 1000
    c.log_every_steps = 50

    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.augment.blur_prob = (0.0, 0.0)
    c.data.augment.solarize_prob = (0.0, 0.2)

    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.projector_dims = (2048, 2048, 2048)

    c.loss.lambd = 0.0051
    c.loss.scale = 0.1

    c.optim.lr_weights = 0.3
    c.optim.lr_biases = 0.3
    c.optim.scale_lr_by_batch = False
    c.optim.weight_decay = 1e-4
    c.optim.eta = 0.02
    c.optim.warmup_epochs = 10
    c.checkpoint.every_steps = 2000
    return c
