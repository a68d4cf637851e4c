"""Fashion-MNIST within about an hour of a 2-core CPU, pretraining and evaluation.

The quick recipe (configs/fashion_mnist_quick.py: ResNet-18 with the "cifar_pool" stem;
projector 1024-1024; batch 256; LARS with the paper's eta and weight decay and 50x its
learning rates, 10.0 / 0.24 x batch/256; augmentations on the device: crops of scale
0.85-1, flip, brightness / contrast jitter, solarize on view B) at **full width** (512
features, against the quick recipe's 0.5) for **3 epochs** (702 steps on the 60,000
training images) with a tenth of them as warm-up. Chosen on the validation split
(experiments/fashion_mnist_tuning.py, seed 0): width 1.0 for 3 epochs 88.66% linear /
84.75% kNN in 39.7 min (f03), width 0.75 for 3 epochs 88.18 / 83.98 in 21.9 min (f02),
width 0.5 for 6 epochs 87.35 / 82.88 in 44.1 min (f01, crops of scale 0.5-1).
The kNN monitor runs at the end; its features are the evaluation's: the fast L-BFGS probe
and kNN (k = 200) on the 60,000 training images, tested on the 10,000 test images, beside
the same encoder at random init and raw pixels. docs/results.md (Fashion-MNIST) has its
numbers.

Reads the IDX files: `apt-get install -y dataset-fashion-mnist` (or --config.data.path=DIR;
without them, TFDS's fashion_mnist).
  python -m bt_jax.main --config configs/fashion_mnist.py --workdir runs/fmnist
The paper's SGD probe and fine-tuning on 1% / 10% of the labels, afterwards:
  python -m bt_jax.evaluate --workdir runs/fmnist --config configs/fashion_mnist.py \\
      --config.eval.linear_sgd.epochs=10 --config.eval.finetune.fractions='(0.01,0.1)'
"""
from configs.common import fashion_mnist_recipe


def get_config():
    c = fashion_mnist_recipe()
    c.model.width = 1.0            # f03: 88.66 / 84.75 against width 0.75's 88.18 / 83.98 (f02)
    c.num_epochs = 3
    c.log_every_steps = 50
    c.optim.warmup_epochs = 0.3    # a tenth of the run
    c.checkpoint.every_steps = 200
    c.eval.linear_sgd.crop_scale = (0.5, 1.0)   # the SGD probe's and fine-tuning's views
    c.eval.finetune.crop_scale = (0.5, 1.0)
    c.monitor.knn_every_epochs = 3.0   # at the end only, as in f03
    return c
