"""The kNN monitor: representation quality while pretraining runs (as solo-learn's and
lightly's monitors), every `monitor.knn_every_epochs` epochs.

The encoder in inference mode (running BatchNorm statistics) embeds the probes' training
images (the bank) and the evaluation split (the queries; the validation part of the train
split when data.validation_examples > 0, else the test split), and the weighted kNN of
`evals.knn.knn_accuracy` (eval.knn's k, temperature and bank chunk) scores them:
the same features and classifier as the end-of-run kNN, so on a fixed encoder the two
agree exactly. The features of the last monitoring step are handed to the end-of-run
evaluation, which then does not extract them again.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import flax.linen as nn
import jax
import numpy as np

from bt_jax.evals import common
from bt_jax.evals.knn import knn_accuracy


def knn_monitor_epochs(monitor_cfg, eval_cfg) -> float:
    """monitor.knn_every_epochs, or 0 (off) where eval.enabled is False."""
    return monitor_cfg.knn_every_epochs if eval_cfg.enabled else 0.0


def monitor_steps(every_epochs: float, steps_per_epoch: int, total_steps: int) -> frozenset:
    """The steps after which the monitor runs: every `every_epochs` epochs (rounded to whole
    steps) and the last step; empty when every_epochs is 0 (off)."""
    if every_epochs <= 0:
        return frozenset()
    interval = max(1, int(round(every_epochs * steps_per_epoch)))
    return frozenset(range(interval, total_steps + 1, interval)) | {total_steps}


class KnnMonitor:
    """kNN accuracy of the backbone's current weights on the evaluation split.

    Args:
      backbone: the Flax backbone, [B, S, S, 3] -> [B, F].
      train_images: [N, S, S, 3] float32 normalised bank images; train_labels: [N] int.
      eval_images: [Q, S, S, 3] float32 normalised queries; eval_labels: [Q] int.
      num_classes: number of classes; knn_cfg: config.eval.knn (k, temperature,
        bank_chunk); batch_size: images per feature-extraction batch (eval.batch_size).
    """

    def __init__(self, backbone: nn.Module, train_images: np.ndarray, train_labels,
                 eval_images: np.ndarray, eval_labels, num_classes: int, knn_cfg,
                 batch_size: int, printer: Optional[Callable[[str], None]] = None):
        self.backbone = backbone
        self.train_images, self.train_labels = train_images, np.asarray(train_labels)
        self.eval_images, self.eval_labels = eval_images, np.asarray(eval_labels)
        self.num_classes = num_classes
        self.cfg = knn_cfg
        self.batch_size = batch_size
        # compiled once, at the first call, and reused at every call
        self.embed = common.feature_fn(backbone, printer)
        self.last_features: Optional[tuple[np.ndarray, np.ndarray]] = None

    def __call__(self, variables: dict) -> dict:
        """{"knn_top1", "knn_top5", "seconds"} of the backbone's {"params", "batch_stats"};
        its features ([N, F], [Q, F]) are kept in `last_features`."""
        start = time.perf_counter()
        variables = jax.device_get(variables)
        bs = self.batch_size
        train_x = common.extract_features(self.backbone, variables, self.train_images, bs,
                                          apply=self.embed)
        eval_x = common.extract_features(self.backbone, variables, self.eval_images, bs,
                                         apply=self.embed)
        knn = knn_accuracy(train_x, self.train_labels, eval_x, self.eval_labels,
                           self.num_classes, k=self.cfg.k,
                           temperature=self.cfg.temperature, bank_chunk=self.cfg.bank_chunk)
        self.last_features = (train_x, eval_x)
        return {"knn_top1": knn["top1"], "knn_top5": knn["top5"],
                "seconds": time.perf_counter() - start}
