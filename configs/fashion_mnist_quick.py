"""Fashion-MNIST on a budget of about 15 minutes of a 2-core CPU, pretraining and evaluation.

Chosen on the validation split (experiments/fashion_mnist_tuning.py, runs q01-q20, with
--config.data.validation_examples=10000: 50,000 training images); q18 is this file as
committed but for the kNN monitor's mid-run call. docs/results.md (Fashion-MNIST) has its
validation and test numbers.

ResNet-18 with the "cifar_pool" stem (3x3/1 conv + 2x2 max-pool: stages at 14, 7, 4, 2 px)
at width 0.5 (256 features: +2.8 points linear over width 0.25 in q13 against q10),
projector 1024-1024 (512-512 and 2048-2048 did worse: q16, q15), batch 256, one epoch (234
steps on the 60,000 training images; two do not fit 15 minutes at this width) with a tenth
of it as warm-up, LARS with the paper's eta and weight decay and 50x its learning rates
(10.0 / 0.24 x batch/256: q10 against q09 and q07), augmentations on the device (crops of
scale 0.85-1: 0.25 < 0.5 < 0.7 < 0.85 in q04, q14, q17, q18; flip, brightness / contrast
jitter, solarize on view B, which q19 shows helps; no blur, hue or saturation for 28x28
grayscale images). Evaluation: the fast L-BFGS probe and kNN (k = 200) on the 60,000
training images, tested on the 10,000 test images, beside the same encoder at random init
and raw pixels. The kNN monitor runs once, at the end (a mid-run call would cost about a
tenth of this budget); its features are the evaluation's.

    python -m bt_jax.main --config configs/fashion_mnist_quick.py --workdir runs/fmnist_quick

Tune with --config.data.validation_examples=10000 (experiments/fashion_mnist_tuning.py).
"""
from configs.common import fashion_mnist_recipe


def get_config():
    c = fashion_mnist_recipe()
    c.num_epochs = 1               # width 0.5 for 2 epochs (q13) does not fit 15 minutes
    c.log_every_steps = 25
    c.optim.warmup_epochs = 0.1    # a tenth of the run, as in the 2-epoch runs q07, q09-q11, q13
    c.checkpoint.every_steps = 100
    c.monitor.knn_every_epochs = 1.0   # at the end only: 12-16% of the run at mid-epoch too
    return c
