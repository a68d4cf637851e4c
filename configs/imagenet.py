"""The paper's ImageNet recipe (Zbontar et al. 2021, Section 4 and its official code): ResNet-50 with
zero-init residuals, projector 8192-8192-8192, lambda 0.0051, LARS (eta 0.001, momentum
0.9, wd 1.5e-6), learning rates 0.2 (weights) and 0.0048 (biases, BN) times batch/256,
10 warm-up epochs then cosine to 1/1000, batch 2048, 1000 epochs, 224 px crops with the
full augmentation set (blur p 1.0 / 0.1, solarize p 0.0 / 0.2). Reported: 73.2% linear
top-1 (paper), 73.5% (released weights).

Needs ImageNet prepared for TFDS: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in DIR/downloads/manual, run `tfds build imagenet2012
--data_dir=DIR`, then pass --config.data.path=DIR. On GPUs, --config.data.augment_on=device
moves the colour ops onto the accelerator; --config.model.dtype=bfloat16 halves activations.
  python -m bt_jax.main --config configs/imagenet.py --workdir runs/imagenet
"""
from bt_jax.config import base_config


def get_config():
    c = base_config()            # base_config holds the paper's numbers already
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.eval.baselines = False     # pixels of 1.28M images do not fit in memory
    c.checkpoint.every_steps = 5000
    return c
