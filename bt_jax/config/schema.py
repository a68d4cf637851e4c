"""The run's own settings and how a whole config is put together from parts.

- `run_sections()`: what belongs to the run rather than to one component: its length, the
  data and its augmentations, the optimiser, checkpoints, the training-time monitors
  (`monitor.*`) and what every evaluation shares (`eval.*`), with their checks
  (`run_parts`).
- `Part` and `assemble`: each component (an objective of bt_jax/losses, a protocol of
  bt_jax/evals, the model) declares its defaults and checks its own sub-config beside its
  code; `bt_jax.config` lists the parts and hands them to `assemble` and `check_parts`.
This module imports no model, loss or evaluation module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from bt_jax.data.layout import AUGMENT_ON
from bt_jax.errors import ConfigError

from bt_jax.config.legacy import OLD_LINEAR_PROTOCOLS, RENAMED, renamed_message
from bt_jax.config.tree import flatten, sub_config


@dataclasses.dataclass(frozen=True)
class Part:
    """One component's settings.

    path: where they live ("eval.knn", "loss.vicreg"); a path that is already a section
      ("loss", "model") merges them into it.
    defaults: {field: default}.
    check: (its sub-config) -> None; raises ConfigError naming the field and the fix.
    """
    path: str
    defaults: dict
    check: Callable[[Any], None] = lambda cfg: None


def run_sections() -> ml_collections.ConfigDict:
    """The run's own settings, at the paper's values (ImageNet recipe)."""
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

    c.model = ml_collections.ConfigDict()   # its fields: bt_jax/models/factory.py

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "barlow_twins"       # an objective of bt_jax.losses.OBJECTIVES:
    #                                    "barlow_twins" | "info_nce" | "vicreg"
    c.loss.scale = 1.0                 # the objective's value is multiplied by this
    c.loss.stop_gradient = False       # True: no gradient through view B's embedding
    # Each objective's own settings: Barlow Twins' at loss.* (lambd, redundancy, ...:
    # bt_jax/losses/barlow_twins.py), the others' at loss.<kind>.* (loss.info_nce,
    # loss.vicreg).

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
    # jax.profiler traces of num_steps steps from start_step into WORKDIR/plugins/profile/.
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 10
    c.profile.num_steps = 0      # 0: no profile

    # What runs beside pretraining.
    c.monitor = ml_collections.ConfigDict()
    # Online probe: a linear classifier on stop-gradient features, trained during
    # pretraining (Adam); off where the pretraining split has no labels.
    c.monitor.online_probe = True
    c.monitor.online_probe_lr = 1e-3
    # kNN monitor: every this many epochs (and at the end) the encoder's kNN accuracy on
    # the evaluation split (eval.knn's settings, as the end-of-run kNN) goes to
    # metrics.jsonl, TensorBoard, the progress output and training_curves.png. May be
    # fractional; 0: off.
    c.monitor.knn_every_epochs = 0.0
    # Collapse diagnostics during pretraining (0: only at the end).
    c.monitor.diagnostics_every_steps = 1000

    # What every evaluation shares; each protocol's own settings: eval.<protocol>.*.
    c.eval = ml_collections.ConfigDict()
    # False: pretrain only (e.g. unlabelled data): no protocol, no kNN monitor, no
    # results.json (the online probe, part of the train state, is monitor.online_probe's).
    c.eval.enabled = True
    c.eval.batch_size = 512      # feature extraction
    c.eval.baselines = True      # also probe a random-init encoder and raw pixels
    # The evaluation protocols to run, by module of bt_jax/evals/ (bt_jax.config: the four
    # built-in ones, evals.BUILT_IN; a protocol a user registers runs where this names
    # it); each is skipped where its own settings ask for no work (linear_sgd.epochs=0,
    # finetune.fractions=()).
    c.eval.protocols = ()
    # The probes (linear, kNN) fit on a class-balanced subset of this many labelled training
    # images, drawn by the seed; 0: all of them (the protocol). Sweeps on a CPU use it.
    c.eval.probe_train_examples = 0
    # The protocol whose accuracy is results.json's linear_top1 (both are kept).
    c.eval.linear_protocol = "linear_sgd"
    c.eval.tsne_points = 2000    # points of the test features' t-SNE plot; 0: no tsne.png
    return c


def assemble(parts) -> ml_collections.ConfigDict:
    """run_sections() with each Part's defaults at its path."""
    c = run_sections()
    for part in parts:
        *parents, leaf = part.path.split(".")
        node = c
        for name in parents:
            node = node[name]
        if leaf in node:
            overlap = set(node[leaf]) & set(part.defaults)
            assert not overlap, f"{part.path}: fields defined twice: {sorted(overlap)}"
            for name, value in part.defaults.items():
                node[leaf][name] = value
        else:
            node[leaf] = ml_collections.ConfigDict(dict(part.defaults))
    return c


def check_parts(tree, parts) -> None:
    """Each part's own check, on its own sub-config of `tree` (the whole config)."""
    for part in parts:
        part.check(sub_config(tree, part.path))


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_length(*, batch_size: int, num_epochs: float, num_steps: int,
                 log_every_steps: int) -> None:
    """The run's top-level fields: how long it runs and how often it logs."""
    _need(batch_size > 0, f"batch_size must be positive; got {batch_size}.")
    _need(num_steps >= 0, f"num_steps must be >= 0 (0: from num_epochs); got {num_steps}.")
    _need(num_steps > 0 or num_epochs > 0, "set num_epochs or num_steps to a positive number.")
    _need(log_every_steps > 0, "log_every_steps must be positive.")


def check_data(d) -> None:
    """config.data's shared fields (each source checks its own when it loads)."""
    _need(d.image_size > 0, f"data.image_size must be positive; got {d.image_size}.")
    _need(d.augment_on in AUGMENT_ON, f"data.augment_on must be one of {AUGMENT_ON}; got "
          f"{d.augment_on!r}.")
    _need(d.shuffle_buffer >= 0, "data.shuffle_buffer must be >= 0 (0: no shuffle buffer, "
          "record files still shuffled).")
    _need(d.prefetch_batches >= 1, "data.prefetch_batches must be >= 1.")
    _need(d.validation_examples >= 0, "data.validation_examples must be >= 0 (0: no "
          f"validation hold-out); got {d.validation_examples}.")


def check_optim(o) -> None:
    """config.optim: LARS and its schedules."""
    for field in ("lr_weights", "lr_biases", "weight_decay", "warmup_epochs"):
        _need(o[field] >= 0, f"optim.{field} must be >= 0; got {o[field]}. Learning rates, "
              "weight decay and warm-up are magnitudes: a negative rate would climb the loss.")
    _need(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1); got {o.momentum}.")
    _need(o.eta > 0, f"optim.eta (LARS's trust coefficient) must be positive; got {o.eta}.")
    _need(0 <= o.end_lr_fraction <= 1, "optim.end_lr_fraction must be in [0, 1]; got "
          f"{o.end_lr_fraction}.")


def check_loss_scale(loss) -> None:
    """config.loss's field every objective shares."""
    _need(loss.scale > 0, f"loss.scale must be positive; got {loss.scale}.")


def check_checkpoint(ckpt) -> None:
    """config.checkpoint."""
    _need(ckpt.every_steps > 0, "checkpoint.every_steps must be positive.")
    _need(isinstance(ckpt.keep, int) and ckpt.keep >= 1,
          f"checkpoint.keep must be at least 1 (the newest checkpoint is what a rerun resumes "
          f"from and evaluate reads); got {ckpt.keep}.")


def check_profile(p) -> None:
    _need(p.start_step >= 1 and p.num_steps >= 0, "profile.start_step must be >= 1 and "
          f"profile.num_steps >= 0 (0: no profile); got {p.start_step}, {p.num_steps}.")


def check_monitor(m) -> None:
    """config.monitor: what runs beside pretraining."""
    _need(m.knn_every_epochs >= 0, "monitor.knn_every_epochs must be >= 0 (0: no kNN "
          f"monitor); got {m.knn_every_epochs}.")
    _need(m.diagnostics_every_steps >= 0, "monitor.diagnostics_every_steps must be >= 0 (0: "
          "only at the end).")
    _need(m.online_probe_lr > 0, "monitor.online_probe_lr must be positive; got "
          f"{m.online_probe_lr}.")


def check_eval_shared(e) -> None:
    """config.eval's fields every protocol shares (each protocol checks eval.<name>)."""
    _need(e.linear_protocol not in OLD_LINEAR_PROTOCOLS,
          f"eval.linear_protocol={e.linear_protocol!r} is now "
          f"{OLD_LINEAR_PROTOCOLS.get(e.linear_protocol)!r}: the protocol's name.")
    _need(e.batch_size > 0, f"eval.batch_size (images per feature-extraction batch) must be "
          f"positive; got {e.batch_size}.")
    _need(e.probe_train_examples >= 0, "eval.probe_train_examples must be >= 0 (0: every "
          f"labelled training image); got {e.probe_train_examples}.")
    _need(e.tsne_points >= 0, f"eval.tsne_points must be >= 0 (0: no plot); got "
          f"{e.tsne_points}.")


def run_parts() -> list[Part]:
    """The checks of the run's own sections (their defaults are `run_sections`')."""
    return [Part("data", {}, check_data), Part("optim", {}, check_optim),
            Part("loss", {}, check_loss_scale), Part("checkpoint", {}, check_checkpoint),
            Part("profile", {}, check_profile), Part("monitor", {}, check_monitor),
            Part("eval", {}, check_eval_shared)]


def check_names(tree, reference) -> None:
    """ConfigError for a field `tree` (a whole config) has and `reference` (the assembled
    defaults) does not: an old name gets one line naming the new one, an unknown one the
    section's fields. A recipe can add fields to an unlocked ConfigDict without noticing."""
    known = flatten(reference)
    for name in flatten(tree):
        if name in known:
            continue
        if name in RENAMED:
            raise ConfigError(renamed_message(name))
        section = name.rpartition(".")[0]
        fields = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section)
        raise ConfigError(f"unknown config field {name!r}" + (
            f"; {section}'s fields are {fields}" if fields else "") + ".")
