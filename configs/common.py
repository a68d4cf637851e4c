"""What the recipes of this folder share: solo-learn's CIFAR recipe (configs/cifar10.py,
cifar100.py, stl10.py) and the Fashion-MNIST recipe chosen on the validation split
(configs/fashion_mnist_quick.py, fashion_mnist.py), each built on
`bt_jax.config.base_config` (the paper's ImageNet settings). A recipe imports them as
`from configs.common import cifar_recipe` (bt_jax's recipe loader puts this folder's
parent on the import path)."""
import ml_collections

from bt_jax.config import base_config


def cifar_recipe() -> ml_collections.ConfigDict:
    """solo-learn's CIFAR recipe (its barlow_twins CIFAR config), shared by configs/cifar10.py,
    cifar100.py and stl10.py: ResNet-18 with the CIFAR stem, projector 2048-2048-2048,
    lambda 0.0051 with loss scale 0.1, LARS (eta 0.02, wd 1e-4, trust ratio clipped at the
    learning rate), lr 0.3 for weights and biases not scaled by batch, 10 warm-up epochs,
    batch 256, 1000 epochs, 32 px crops, blur p 0 / 0, solarize p 0 / 0.2."""
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 1000
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
    c.optim.clip_trust_ratio = True
    c.optim.warmup_epochs = 10.0      # may be fractional (a share of an epoch)
    c.checkpoint.every_steps = 2000
    return c


def fashion_mnist_recipe() -> ml_collections.ConfigDict:
    """The Fashion-MNIST recipe chosen on the validation split, shared by
    configs/fashion_mnist_quick.py (1 epoch) and configs/fashion_mnist.py (full width, 3
    epochs), which set the length, logging, checkpoints and kNN monitor: ResNet-18 with the
    "cifar_pool" stem at width 0.5 (256 features), projector 1024-1024, batch 256, LARS
    with the paper's eta and weight decay and 50x its learning rates (10.0 / 0.24 x
    batch/256), a tenth of the run as warm-up, augmentations on the device (crops of scale
    0.85-1, flip, brightness / contrast jitter, solarize on view B; no blur, hue,
    saturation or grayscale for 28x28 grayscale images), the fast probe and kNN at the
    end."""
    c = base_config()
    c.batch_size = 256
    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    c.data.augment_on = "device"
    a = c.data.augment
    # Validation, one epoch at width 0.5: scale 0.5-1 86.27 / 79.35 (q14), 0.7-1 86.72 / 81.42
    # (q17), 0.85-1 87.25 / 82.37 (q18); at width 0.25, 0.5-1 beat 0.25-1 by 1.2 / 1.6 (q05).
    a.crop_scale = (0.85, 1.0)
    a.hue = 0.0                    # grayscale images: hue and saturation do nothing
    a.saturation = 0.0
    a.grayscale_prob = 0.0
    a.blur_prob = (0.0, 0.0)
    a.solarize_prob = (0.0, 0.2)   # none: -1.1 linear / -2.5 kNN (q19 against q18)
    c.model.backbone = "resnet18"
    c.model.stem = "cifar_pool"
    c.model.width = 0.5            # q13: 86.8 / 81.6 against width 0.25's 84.0 / 78.9 (q10)
    c.model.projector_dims = (1024, 1024)
    c.loss.lambd = 0.0051
    c.loss.scale = 1.0
    c.optim.lr_weights = 10.0      # 50x the paper's 0.2 / 0.0048 (x batch / 256): q10
    c.optim.lr_biases = 0.24
    c.optim.scale_lr_by_batch = True
    c.optim.weight_decay = 1.5e-6
    c.optim.eta = 0.001
    c.eval.linear_protocol = "linear_fast"
    c.eval.linear_sgd.epochs = 0   # the SGD probe and fine-tuning: python -m bt_jax.evaluate
    c.eval.finetune.fractions = ()
    c.eval.tsne_points = 0
    c.monitor.diagnostics_every_steps = 0
    return c

