"""The default configuration every recipe in configs/ starts from, and its validation."""
from __future__ import annotations

import os

import ml_collections

from bt_jax import evals, losses
from bt_jax.errors import ConfigError
from bt_jax.models.conv import CONV_IMPLS
from bt_jax.models.factory import DTYPES
from bt_jax.models.projector import LINEAR_INITS
from bt_jax.models.resnet import STEMS, min_image_size, stem_minimums


def base_config() -> ml_collections.ConfigDict:
    """Paper defaults (ImageNet recipe); recipes in configs/ override what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 2048          # global, over all devices and processes
    c.num_epochs = 1000
    c.num_steps = 0              # 0: num_epochs * steps_per_epoch
    c.log_every_steps = 50

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.path = ""             # data files, or TFDS's data_dir for TFDS sources
    c.data.download = False      # may TFDS sources download (needs a network)?
    c.data.pretrain_split = ""   # "" = the source's default ("train"; stl10 "train+unlabelled")
    c.data.strict_decode = False  # folder: stop at an undecodable file (else skip + count)
    c.data.verify_files = True   # folder: decode every file once up front, drop bad ones
    c.data.shuffle_buffer = 10_000  # streamed sources: per-process shuffle buffer (examples)
    c.data.prefetch_batches = 2  # global batches transferred to the devices ahead of the step
    c.data.image_size = 224
    # A class-balanced part of the train split held out for tuning (drawn by the seed):
    # pretraining and the probes use the rest, and the probes are scored on it instead of
    # the test split. 0: no hold-out; probes fit on train, scored on test.
    c.data.validation_examples = 0
    c.data.augment_on = "host"
    c.data.augment = ml_collections.ConfigDict()
    a = c.data.augment
    a.crop_scale = (0.08, 1.0)
    a.crop_ratio = (3 / 4, 4 / 3)
    a.flip_prob = 0.5
    a.jitter_prob = 0.8
    a.brightness = 0.4
    a.contrast = 0.4
    a.saturation = 0.2
    a.hue = 0.1
    a.grayscale_prob = 0.2
    a.blur_sigma = (0.1, 2.0)
    a.blur_prob = (1.0, 0.1)       # (view A, view B)
    a.solarize_prob = (0.0, 0.2)   # (view A, view B)

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "resnet50"
    c.model.stem = "imagenet"
    c.model.width = 1.0
    c.model.projector_dims = (8192, 8192, 8192)
    c.model.dtype = "float32"
    c.model.conv_impl = "auto"         # "xla" | "im2col" | "dense": same result, other speed
    c.model.zero_init_residual = True
    c.model.projector_bn = True        # False: the paper's "no BN in projector" ablation
    c.model.predictor_dims = ()        # e.g. (8192, 8192): a predictor on view A (ablation)
    # The projector's Linear init: "lecun" (Flax's default) or "torch" (PyTorch's nn.Linear
    # default, as FAIR's code has it: 1.73x smaller weights), for exact reproduction.
    c.model.projector_init = "lecun"
    # Start from these weights (PyTorch's or bt_jax's: what `python -m bt_jax.convert` reads):
    # the backbone, and the projector where the file holds one of this config's shape.
    c.model.init_from = ""

    c.loss = ml_collections.ConfigDict()
    # The paper's 0.0051 is for an 8192-wide projector at batch 2048: lambd (D - 1) / N =
    # 0.020 (the off-diagonal term's sampling noise against the diagonal's D). Keep that
    # ratio when D grows or N shrinks: at D 4096, N 256, 0.0051 costs 7.6 points on
    # Fashion-MNIST, 0.00127 nothing beyond seed noise (docs/ablations.md, projector width).
    c.loss.lambd = 0.0051
    c.loss.scale = 1.0
    c.loss.redundancy = "cross"        # "auto": off-diagonal term from view A's auto-correlation
    # Ablations (paper Table 2): loss.invariance_weight 0 = redundancy term only, lambd 0 =
    # invariance only; normalization "feature" / "none"; kind "info_nce" = cross-entropy
    # with temperature; stop_gradient on view B.
    c.loss.invariance_weight = 1.0
    c.loss.normalization = "batch"     # "batch" | "feature" | "none"
    c.loss.kind = "barlow_twins"       # an objective of bt_jax.losses.OBJECTIVES:
    #                                    "barlow_twins" | "info_nce" | "vicreg"
    c.loss.temperature = 0.1           # info_nce only
    # vicreg only: the weights of its three terms (Bardes et al. 2022: 25, 25, 1)
    c.loss.vicreg = ml_collections.ConfigDict(
        {"invariance_weight": 25.0, "variance_weight": 25.0, "covariance_weight": 1.0})
    c.loss.stop_gradient = False       # True: no gradient through view B's embedding
    # How sum C_ij^2 is computed: "direct" forms the [D, D] matrix, "gram" goes through the
    # [N, N] Gram matrices of the views (O(N^2 D)); "auto" takes "gram" when 2N <= D for
    # the global batch N (where it costs no more FLOPs, nor floats sent between devices).
    # Same values and gradients up to float32 rounding.
    c.loss.correlation_path = "auto"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.0048
    c.optim.scale_lr_by_batch = True   # lr * batch_size / 256
    c.optim.weight_decay = 1.5e-6
    c.optim.momentum = 0.9
    c.optim.eta = 0.001
    c.optim.clip_trust_ratio = False   # solo-learn's LARS clip_lr: rate min(trust, lr)
    c.optim.warmup_epochs = 10.0      # may be fractional (a share of an epoch)
    c.optim.end_lr_fraction = 1e-3

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.enabled = True        # False: pretrain only (e.g. unlabelled data); no results.json
    c.eval.batch_size = 512      # feature extraction
    c.eval.baselines = True      # also probe a random-init encoder and raw pixels
    # The evaluation protocols to run, by module of bt_jax/evals/ (`evals.PROTOCOLS`); each
    # is skipped where its own settings ask for no work (linear_epochs=0, semi_fractions=()).
    c.eval.protocols = evals.PROTOCOLS
    # The probes (linear, kNN) fit on a class-balanced subset of this many labelled training
    # images, drawn by the seed; 0: all of them (the protocol). Sweeps on a CPU use it.
    c.eval.probe_train_examples = 0
    # Which probe's accuracy is results.json's linear_top1: "fast" or "sgd" (both are kept).
    c.eval.linear_protocol = "sgd"
    # The paper's linear probe (B.1): frozen backbone, random-resized-crop + flip views,
    # SGD momentum 0.9, cosine; 0 epochs: off.
    c.eval.linear_epochs = 100
    c.eval.linear_batch_size = 256
    c.eval.linear_lr = 0.3
    c.eval.linear_weight_decay = 1e-6
    c.eval.linear_crop_scale = (0.08, 1.0)   # also the fine-tuning's views
    c.eval.linear_flip_prob = 0.5
    # The fast probe: L-BFGS softmax regression on cached features, L2 chosen on a held-out
    # part of the training split.
    c.eval.fast_l2_grid = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    c.eval.fast_holdout_fraction = 0.1
    c.eval.fast_max_iter = 100
    # Weighted kNN (Wu et al. 2018) on L2-normalised features; the bank goes to the device
    # in chunks of knn_bank_chunk rows.
    c.eval.knn_k = 200
    c.eval.knn_temperature = 0.1
    c.eval.knn_bank_chunk = 16384
    # Online probe: a linear classifier on stop-gradient features, trained during
    # pretraining (Adam); off where the pretraining split has no labels.
    c.eval.online_probe = True
    c.eval.online_probe_lr = 1e-3
    # Semi-supervised fine-tuning (B.2) on class-balanced label subsets; () : off.
    c.eval.semi_fractions = (0.01, 0.1)
    c.eval.semi_epochs = 20
    c.eval.semi_batch_size = 256
    c.eval.semi_lr_backbone = 0.005
    c.eval.semi_lr_head = 0.5
    c.eval.semi_weight_decay = 0.0
    # kNN monitor: every this many epochs (and at the end) the encoder's kNN accuracy on the
    # evaluation split (as the end-of-run kNN) goes to metrics.jsonl, TensorBoard, the
    # progress output and training_curves.png. May be fractional; 0: off.
    c.eval.monitor_every_epochs = 0.0
    # Collapse diagnostics during pretraining (0: only at the end) and the t-SNE plot.
    c.eval.diagnostics_every_steps = 1000
    c.eval.tsne_points = 2000    # 0: no tsne.png
    return c


def eval_split_name(config: ml_collections.ConfigDict) -> str:
    """"validation" when the probes are scored on a hold-out of the train split
    (data.validation_examples > 0), else "test"."""
    return "validation" if config.data.validation_examples else "test"


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
    c.eval.linear_protocol = "fast"
    c.eval.linear_epochs = 0       # the SGD probe and fine-tuning: python -m bt_jax.evaluate
    c.eval.semi_fractions = ()
    c.eval.tsne_points = 0
    c.eval.diagnostics_every_steps = 0
    return c


def flatten(tree, prefix: str = "") -> dict:
    """{"section.field": value} of a ConfigDict or a nested dict (e.g. a run's config.json),
    lists as tuples: the form `ConfigDict.update_from_flattened_dict` takes."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def diff(reference: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> list[str]:
    """["field: old -> new", ...] for every leaf field where config differs from reference
    (sorted by name; fields only one of them has show "(absent)")."""
    a, b = flatten(reference), flatten(config)
    lines = []
    for name in sorted(set(a) | set(b)):
        old, new = a.get(name, "(absent)"), b.get(name, "(absent)")
        if old != new and not (isinstance(old, (tuple, list)) and isinstance(new, (tuple, list))
                               and tuple(old) == tuple(new)):
            lines.append(f"{name}: {old!r} -> {new!r}")
    return lines


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field and the fix for values that cannot work."""

    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(config.batch_size > 0, f"batch_size must be positive; got {config.batch_size}.")
    need(config.num_steps >= 0, f"num_steps must be >= 0 (0: from num_epochs); got "
         f"{config.num_steps}.")
    need(config.num_steps > 0 or config.num_epochs > 0,
         "set num_epochs or num_steps to a positive number.")
    need(config.model.dtype in DTYPES, f"model.dtype must be one of {tuple(DTYPES)}; got "
         f"{config.model.dtype!r}.")
    need(config.model.conv_impl in CONV_IMPLS, f"model.conv_impl must be one of {CONV_IMPLS}; "
         f"got {config.model.conv_impl!r}.")
    need(config.model.projector_init in LINEAR_INITS, f"model.projector_init must be one of "
         f"{tuple(LINEAR_INITS)}; got {config.model.projector_init!r}.")
    need(config.model.width > 0, f"model.width must be positive; got {config.model.width}.")
    need(len(config.model.projector_dims) > 0 and all(d > 0 for d in config.model.projector_dims),
         f"model.projector_dims must be positive widths; got {config.model.projector_dims}.")
    need(all(isinstance(d, int) for d in config.model.projector_dims),
         f"model.projector_dims must be a tuple of integer widths, e.g. (2048, 2048, 2048); got "
         f"{config.model.projector_dims!r}.")
    need(config.data.image_size > 0, f"data.image_size must be positive; got "
         f"{config.data.image_size}.")
    need(config.model.stem in STEMS, f"model.stem must be one of {STEMS}; got "
         f"{config.model.stem!r}.")
    smallest = min_image_size(config.model.stem)
    need(config.data.image_size >= smallest,
         f"data.image_size={config.data.image_size} is too small for model.stem="
         f"{config.model.stem!r}: its network reduces {smallest}x{smallest} px to one "
         f"last-stage pixel. Raise data.image_size to at least {smallest}, or use a stem that "
         f"downsamples less ({stem_minimums()}).")
    o = config.optim
    for field in ("lr_weights", "lr_biases", "weight_decay", "warmup_epochs"):
        need(o[field] >= 0, f"optim.{field} must be >= 0; got {o[field]}. Learning rates, "
             "weight decay and warm-up are magnitudes: a negative rate would climb the loss.")
    need(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1); got {o.momentum}.")
    need(o.eta > 0, f"optim.eta (LARS's trust coefficient) must be positive; got {o.eta}.")
    need(0 <= o.end_lr_fraction <= 1, "optim.end_lr_fraction must be in [0, 1]; got "
         f"{o.end_lr_fraction}.")
    need(config.loss.lambd >= 0, f"loss.lambd must be >= 0 (0: the invariance term only); got "
         f"{config.loss.lambd}.")
    need(config.loss.scale > 0, f"loss.scale must be positive; got {config.loss.scale}.")
    need(config.loss.invariance_weight >= 0, "loss.invariance_weight must be >= 0; got "
         f"{config.loss.invariance_weight}.")
    need(config.loss.redundancy in losses.REDUNDANCY_MODES,
         f"loss.redundancy must be one of {losses.REDUNDANCY_MODES}; got "
         f"{config.loss.redundancy!r}.")
    need(config.loss.normalization in losses.NORMALIZATIONS,
         f"loss.normalization must be one of {losses.NORMALIZATIONS}; got "
         f"{config.loss.normalization!r}.")
    need(config.loss.kind in losses.OBJECTIVES,
         f"loss.kind must be one of {sorted(losses.OBJECTIVES)}; got {config.loss.kind!r}.")
    need(all(w >= 0 for w in config.loss.vicreg.values()),
         f"loss.vicreg's weights must be >= 0; got {dict(config.loss.vicreg)}.")
    need(config.loss.temperature > 0, "loss.temperature must be positive.")
    need(config.loss.correlation_path in losses.CORRELATION_PATHS,
         f"loss.correlation_path must be one of {losses.CORRELATION_PATHS}; got "
         f"{config.loss.correlation_path!r}.")
    need(all(d > 0 for d in config.model.predictor_dims),
         f"model.predictor_dims must be positive widths or (); got "
         f"{config.model.predictor_dims}.")
    need(not config.model.init_from or os.path.isfile(config.model.init_from),
         f"model.init_from={config.model.init_from!r} does not exist: give a weights file "
         "(.pth / .pt / .safetensors / .msgpack), or '' to start from random weights.")
    need(config.log_every_steps > 0, "log_every_steps must be positive.")
    need(config.checkpoint.every_steps > 0, "checkpoint.every_steps must be positive.")
    need(config.data.shuffle_buffer >= 0, "data.shuffle_buffer must be >= 0 (0: no shuffle "
         "buffer, record files still shuffled).")
    need(config.data.prefetch_batches >= 1, "data.prefetch_batches must be >= 1.")
    need(config.data.validation_examples >= 0, "data.validation_examples must be >= 0 (0: "
         f"no validation hold-out); got {config.data.validation_examples}.")
    e = config.eval
    unknown = [p for p in e.protocols if p not in evals.PROTOCOLS]
    need(not unknown, f"eval.protocols: unknown protocol(s) {unknown}; choose from "
         f"{evals.PROTOCOLS}.")
    need(e.linear_protocol in ("fast", "sgd"),
         f"eval.linear_protocol must be 'fast' or 'sgd'; got {e.linear_protocol!r}.")
    need(f"linear_{e.linear_protocol}" in e.protocols,
         f"eval.linear_protocol={e.linear_protocol!r} reports the 'linear_{e.linear_protocol}' "
         f"protocol, which eval.protocols={tuple(e.protocols)} leaves out: add it, or change "
         "eval.linear_protocol.")
    need(e.linear_protocol == "fast" or e.linear_epochs > 0,
         "eval.linear_protocol='sgd' needs eval.linear_epochs > 0 (or set "
         "eval.linear_protocol='fast').")
    need(len(e.fast_l2_grid) > 0 and all(v >= 0 for v in e.fast_l2_grid),
         f"eval.fast_l2_grid must be non-negative strengths; got {e.fast_l2_grid}.")
    need(0.0 <= e.fast_holdout_fraction < 1.0, "eval.fast_holdout_fraction must be in [0, 1).")
    need(e.probe_train_examples >= 0, "eval.probe_train_examples must be >= 0 (0: every "
         f"labelled training image); got {e.probe_train_examples}.")
    need(e.knn_k > 0 and e.knn_bank_chunk > 0, "eval.knn_k and eval.knn_bank_chunk must be "
         "positive.")
    need(all(0.0 < f <= 1.0 for f in e.semi_fractions),
         f"eval.semi_fractions must be fractions in (0, 1]; got {e.semi_fractions}.")
    need(e.monitor_every_epochs >= 0, "eval.monitor_every_epochs must be >= 0 (0: no kNN "
         f"monitor); got {e.monitor_every_epochs}.")
    need(e.monitor_every_epochs == 0 or e.enabled, "eval.monitor_every_epochs needs labels "
         "to score: it cannot run with eval.enabled=False; set it to 0.")
    need(e.diagnostics_every_steps >= 0, "eval.diagnostics_every_steps must be >= 0 (0: only "
         "at the end).")
