"""Demo recipe: scikit-learn's 8x8 digits upsampled to 32x32, a narrow CIFAR-stem ResNet-18.

Runs in minutes on a 2-core CPU:
  python -m bt_jax.main --config configs/digits.py --workdir runs/demo
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 256
    c.num_epochs = 50
    c.log_every_steps = 10

    c.data.name = "digits"
    c.data.image_size = 32
    a = c.data.augment
    a.crop_scale = (0.3, 1.0)      # an 8x8 digit survives only mild crops
    a.flip_prob = 0.0              # mirrored digits are other glyphs
    a.hue = 0.0                    # grayscale images: hue and saturation do nothing
    a.saturation = 0.0
    a.blur_sigma = (0.1, 1.0)      # sigma in pixels of the 32x32 image

    c.model.backbone = "resnet18"
    c.model.stem = "cifar"
    c.model.width = 0.125
    c.model.projector_dims = (512, 512, 512)

    c.loss.lambd = 0.0051
    c.loss.scale = 1.0

    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.0048
    c.optim.scale_lr_by_batch = True
    c.optim.weight_decay = 1.5e-6
    c.optim.warmup_epochs = 3

    c.checkpoint.every_steps = 100
    c.eval.linear_protocol = "linear_fast"   # results.json's linear_top1: the probe for small data
    # The paper's SGD probe is left to `python -m bt_jax.evaluate --workdir runs/demo
    # --config configs/digits.py --config.eval.linear_sgd.epochs=30` (it took the demo from
    # 5 to 16 minutes); its views would be these:
    c.eval.linear_sgd.epochs = 0
    c.eval.linear_sgd.crop_scale = (0.3, 1.0)   # the views of pretraining: mild crops, no flip
    c.eval.linear_sgd.flip_prob = 0.0
    c.eval.finetune.crop_scale = (0.3, 1.0)     # fine-tuning's views: the same
    c.eval.finetune.flip_prob = 0.0
    c.eval.knn.k = 20              # ~144 images per class: k=200 would outvote every class
    c.eval.finetune.fractions = (0.1,)  # 1% of 1,438 images is one or two per class
    c.monitor.diagnostics_every_steps = 50
    return c
