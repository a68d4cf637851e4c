"""Supervised heads on a pretrained backbone, trained on augmented images: the paper's
linear probe (Appendix B.1) and its semi-supervised fine-tuning (B.2).

Both train a linear layer on backbone features of RandomResizedCrop + horizontal-flip
views, with SGD (momentum 0.9) and a per-step cosine learning rate, as the official
evaluate.py does:
- linear probe: frozen backbone in inference mode (running BatchNorm statistics), head
  lr 0.3, weight decay 1e-6, 100 epochs, batch 256;
- fine-tuning: backbone and head both trained (BatchNorm in training mode), on a 1% or 10%
  label subset (`common.label_subset`), 20 epochs, backbone lr 0.005, head lr 0.5, no weight decay.
The crops run on the device (`bt_jax.data.device_augment`, no TensorFlow), every view a
function of (seed, epoch, example index). Test images are classified un-augmented.

The caller's variables are never changed: the frozen probe only reads them, and fine-tuning
works on its own copy (buffers are never donated).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bt_jax import parallel, progress
from bt_jax.data import device_augment
from bt_jax.evals.common import batched_apply, topk_accuracy

# (variables, images [B, S, S, 3] normalised, train: bool) -> (features [B, F], new
# batch_stats or None)
Encoder = Callable[[dict, jax.Array, bool], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """How a head is trained (the paper's B.1 linear probe by default)."""
    epochs: int = 100
    batch_size: int = 256
    lr_head: float = 0.3
    lr_backbone: float = 0.0       # > 0 with finetune
    weight_decay: float = 1e-6
    momentum: float = 0.9
    crop_scale: tuple = (0.08, 1.0)
    flip_prob: float = 0.5
    finetune: bool = False         # False: frozen backbone in inference mode
    seed: int = 0


def backbone_encoder(backbone) -> Encoder:
    """An Encoder of a Flax backbone with {"params", "batch_stats"} variables."""
    def encode(variables, x, train):
        if not train:
            return backbone.apply(variables, x, train=False), None
        out, mut = backbone.apply(variables, x, train=True, mutable=["batch_stats"])
        return out, mut["batch_stats"]
    return encode


def pixel_encoder(variables, x, train):
    """The raw-pixel baseline as an Encoder: [B, S, S, 3] -> [B, S*S*3]."""
    del variables, train
    return x.reshape(x.shape[0], -1), None


def _train_view(image, key, size: int, crop_scale, flip_prob: float, mean, std):
    """uint8 [H, W, C] -> normalised float32 [size, size, 3]: RandomResizedCrop (bicubic,
    ratio 3/4..4/3) and a horizontal flip with probability flip_prob (0.5 in the paper)."""
    k_crop, k_flip = jax.random.split(key)
    x = device_augment.unit_rgb(image)
    window = device_augment.crop_window(k_crop, x.shape[0], x.shape[1], crop_scale,
                                        (3 / 4, 4 / 3))
    x = device_augment.resized_crop(x, *window, size)
    x = jnp.where(jax.random.bernoulli(k_flip, flip_prob), x[:, ::-1], x)
    return (x - mean) / std


def _eval_view(image, size: int, mean, std):
    """uint8 [H, W, C] -> normalised float32 [size, size, 3], the whole image resized."""
    x = device_augment.unit_rgb(image)
    if x.shape[0] != size or x.shape[1] != size:
        x = device_augment.resized_crop(x, 0.0, 0.0, float(x.shape[0]), float(x.shape[1]), size)
    return (x - mean) / std


def _head_init(key, features: int, num_classes: int) -> dict:
    """Weights N(0, 0.01^2), zero bias: the official evaluate.py's initialisation."""
    return {"w": 0.01 * jax.random.normal(key, (features, num_classes)),
            "b": jnp.zeros((num_classes,))}


def _optimizer(cfg: HeadConfig, total_steps: int) -> optax.GradientTransformation:
    """SGD with momentum and a cosine rate per parameter group ("head", "backbone")."""
    def sgd(lr):
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(optax.cosine_decay_schedule(lr, max(total_steps, 1)),
                                     momentum=cfg.momentum))
    return optax.multi_transform({"head": sgd(cfg.lr_head), "backbone": sgd(cfg.lr_backbone)},
                                 {"head": "head", "backbone": "backbone"})


def train_head(encode: Encoder, variables: dict, images: np.ndarray, labels: np.ndarray,
               num_classes: int, cfg: HeadConfig, *, image_size: int, mean, std,
               on_epoch: Optional[Callable[[int], None]] = None) -> tuple[dict, dict]:
    """Trains a linear head (and, with cfg.finetune, the backbone) on augmented views.

    Args:
      encode: the backbone as an Encoder; variables: its variables (not modified).
      images: uint8 [N, H, W, C] training images; labels: [N] int.
      image_size: the crop size S; mean, std: [3] normalisation of the pretraining.
      on_epoch: called with the number of finished epochs after each (progress lines).

    Returns:
      (head {"w": [F, C], "b": [C]}, backbone variables after training: the input ones
      when frozen).
    """
    n = images.shape[0]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    total = cfg.epochs * steps_per_epoch
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    probe_x = jax.vmap(lambda im: _eval_view(im, image_size, mean, std))(
        jnp.asarray(images[:1]))
    feat_dim = encode(variables, probe_x, False)[0].shape[-1]
    key = jax.random.key(cfg.seed)
    trainable = {"head": _head_init(jax.random.fold_in(key, 1), feat_dim, num_classes),
                 "backbone": variables.get("params", {}) if cfg.finetune else {}}
    # Frozen: the backbone's variables are a constant input. Fine-tuning: its own copy.
    batch_stats = variables.get("batch_stats", {})
    tx = _optimizer(cfg, total)
    opt_state = tx.init(trainable)
    labels = np.asarray(labels, np.int32)

    @functools.partial(jax.jit, compiler_options=parallel.compiler_options())
    def step(trainable, opt_state, batch_stats, frozen, imgs, ys, idx, epoch):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, epoch), i))(idx)
        x = jax.vmap(lambda im, k: _train_view(im, k, image_size, cfg.crop_scale,
                                               cfg.flip_prob, mean, std))(imgs, keys)

        def loss_fn(t):
            if cfg.finetune:
                feats, new_stats = encode({"params": t["backbone"], "batch_stats": batch_stats},
                                          x, True)
            else:
                feats, new_stats = encode(frozen, x, False)
                feats = jax.lax.stop_gradient(feats)
            logits = feats @ t["head"]["w"] + t["head"]["b"]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
            return ce, new_stats

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        new_stats = batch_stats if new_stats is None else new_stats
        return optax.apply_updates(trainable, updates), opt_state, new_stats

    step = progress.CompilesAhead("the fine-tuning step" if cfg.finetune else
                                  "the linear head's training step", step)
    for epoch in range(cfg.epochs):
        perm = np.random.default_rng([cfg.seed, epoch, 0xC1]).permutation(n)
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            trainable, opt_state, batch_stats = step(
                trainable, opt_state, batch_stats, {} if cfg.finetune else variables,
                images[idx], labels[idx],
                jnp.asarray(idx, jnp.int32), jnp.int32(epoch))
        if on_epoch is not None:
            jax.block_until_ready(trainable)
            on_epoch(epoch + 1)
    if cfg.finetune:
        variables = {"params": trainable["backbone"], "batch_stats": batch_stats}
    return trainable["head"], variables


def predict_scores(encode: Encoder, variables: dict, head: dict, images: np.ndarray, *,
                   image_size: int, mean, std, batch_size: int = 512) -> np.ndarray:
    """[N, C] logits of un-augmented uint8 images [N, H, W, C] (backbone in inference mode)."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

    @functools.partial(jax.jit, compiler_options=parallel.compiler_options())
    def scores(variables, head, imgs):
        x = jax.vmap(lambda im: _eval_view(im, image_size, mean, std))(imgs)
        return encode(variables, x, False)[0] @ head["w"] + head["b"]

    return batched_apply(lambda chunk: scores(variables, head, chunk), images, batch_size)


def head_accuracy(encode: Encoder, variables: dict, head: dict, images, labels, *,
                  image_size: int, mean, std) -> dict:
    """{"top1", "top5"} of a trained head on un-augmented test images."""
    scores = predict_scores(encode, variables, head, images, image_size=image_size, mean=mean,
                            std=std)
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5)}


def train_and_test(encode: Encoder, variables: dict, train: tuple, test: tuple,
                   num_classes: int, cfg: HeadConfig, *, image_size: int, mean, std,
                   subset: Optional[np.ndarray] = None,
                   on_epoch: Optional[Callable[[int], None]] = None) -> dict:
    """train_head on (images, labels) `train` (restricted to `subset` indices if given),
    then its {"top1", "top5"} on `test`."""
    images, labels = train
    if subset is not None:
        images, labels = images[subset], np.asarray(labels)[subset]
    head, trained = train_head(encode, variables, images, labels, num_classes, cfg,
                               image_size=image_size, mean=mean, std=std, on_epoch=on_epoch)
    return head_accuracy(encode, trained, head, *test, image_size=image_size, mean=mean, std=std)
