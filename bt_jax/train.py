"""TrainState, the data-parallel train step, and train_and_evaluate(config, workdir)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bt_jax import checkpoint as ckpt_lib
from bt_jax import config as config_lib
from bt_jax import diagnostics, event_writer, export, losses, optim, parallel, plots
from bt_jax.models import BarlowTwins
from bt_jax.models.factory import backbone_variables, create_model, init_variables


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: replicated over the mesh.

    probe: the online linear probe, {"params": {"w": [F, C], "b": [C]}, "opt_state"}, or
    None when it is off (eval.online_probe False, or unlabelled data).
    """
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    probe: Any = None


def learning_rate_schedules(config: ml_collections.ConfigDict, steps_per_epoch: int,
                            total_steps: int) -> tuple[optax.Schedule, optax.Schedule]:
    """(weights, biases) warm-up + cosine schedules; peaks scaled by batch/256 if configured."""
    o = config.optim
    warmup = min(int(round(o.warmup_epochs * steps_per_epoch)), total_steps)

    def sched(base):
        peak = optim.scale_lr_by_batch(base, config.batch_size) if o.scale_lr_by_batch else base
        return optim.warmup_cosine_schedule(peak, total_steps, warmup, o.end_lr_fraction)

    return sched(o.lr_weights), sched(o.lr_biases)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     total_steps: int) -> optax.GradientTransformation:
    """LARS with the warm-up + cosine schedules of config.optim."""
    o = config.optim
    weight_lr, bias_lr = learning_rate_schedules(config, steps_per_epoch, total_steps)
    return optim.lars(weight_lr, bias_lr, weight_decay=o.weight_decay, momentum=o.momentum,
                      eta=o.eta, clip_trust_ratio=o.clip_trust_ratio)


def online_probe_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam at eval.online_probe_lr: robust to the scale of unnormalised backbone features,
    which changes by orders of magnitude as pretraining goes."""
    return optax.adam(config.eval.online_probe_lr)


def init_probe(feature_dim: int, num_classes: int,
               probe_tx: optax.GradientTransformation) -> dict:
    """A zero-initialised online linear probe and its optimiser state."""
    params = {"w": jnp.zeros((feature_dim, num_classes)), "b": jnp.zeros((num_classes,))}
    return {"params": params, "opt_state": probe_tx.init(params)}


def init_state(model: BarlowTwins, tx: optax.GradientTransformation, rng: jax.Array,
               image_size: int, *, num_classes: int = 0,
               probe_tx: Optional[optax.GradientTransformation] = None) -> TrainState:
    """A fresh TrainState at step 0; with probe_tx and num_classes > 0, an online probe."""
    v = init_variables(model, rng, image_size)
    probe = None
    if probe_tx is not None and num_classes > 0:
        features = jax.eval_shape(lambda: model.apply(
            v, jnp.zeros((2, image_size, image_size, 3)), train=False))["features"]
        probe = init_probe(features.shape[-1], num_classes, probe_tx)
    return TrainState(step=jnp.zeros([], jnp.int32), params=v["params"],
                      batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                      probe=probe)


def loss_and_grads(params, batch_stats, batch: dict, *, model: BarlowTwins,
                   loss_cfg: ml_collections.ConfigDict,
                   axis_name: Optional[str]) -> tuple[jax.Array, Any, Any, dict]:
    """Per-device forward and backward pass on this device's slice of the batch.

    Args:
      params, batch_stats: the model's variables (replicated).
      batch: {"view_a": [B, S, S, 3], "view_b": [B, S, S, 3]} this device's rows.
      model: BarlowTwins built with the same axis_name.
      loss_cfg: config.loss: `kind` names the objective (`losses.OBJECTIVES`), the other
        fields are its settings and the ablation switches.
      axis_name: the mesh axis, or None on one device without shard_map.

    Returns:
      (loss, grads, new batch_stats, terms, features): the loss of the global batch and its
      gradient with respect to params (already summed over devices by shard_map's
      autodiff: the gradient of the global batch on one device), the BatchNorm statistics
      after both views, the objective's named scalars (Barlow Twins: {"on_diag",
      "off_diag", ...}), and view A's
      backbone features [B, F] (for the online probe).
    """
    objective = losses.get_objective(loss_cfg.kind)

    def loss_fn(p):
        out_a, mut = model.apply({"params": p, "batch_stats": batch_stats}, batch["view_a"],
                                 train=True, mutable=["batch_stats"])
        out_b, mut = model.apply({"params": p, "batch_stats": mut["batch_stats"]},
                                 batch["view_b"], train=True, predict=False,
                                 mutable=["batch_stats"])
        z_a = out_a.get("prediction", out_a["embedding"])   # the predictor is on view A only
        z_b = out_b["embedding"]
        if loss_cfg.stop_gradient:
            z_b = jax.lax.stop_gradient(z_b)
        loss, terms = objective.fn(z_a, z_b, loss_cfg, axis_name)
        return loss, (mut["batch_stats"], terms, out_a["features"])

    (loss, (new_stats, terms, features)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    return loss, grads, new_stats, terms, features


def online_probe_step(probe: dict, probe_tx: optax.GradientTransformation, features: jax.Array,
                      labels: jax.Array, axis_name: Optional[str]) -> tuple[dict, dict]:
    """One update of the online linear probe on stop-gradient backbone features.

    Labels reach only this classifier, never the backbone. The loss is the mean
    cross-entropy over the labelled examples of the global batch (label -1: unlabelled,
    ignored), so its gradient equals the one-device gradient of the global batch.

    Args:
      probe: {"params": {"w": [F, C], "b": [C]}, "opt_state"}.
      features: [B, F] this device's features; labels: [B] int32.
      axis_name: the mesh axis (sums over devices), or None.

    Returns:
      (updated probe, {"probe_loss", "probe_top1"}): the loss and accuracy on this batch
      before the update (0 where the batch holds no label).
    """
    def total(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    feats = jax.lax.stop_gradient(features).astype(jnp.float32)
    labelled = labels >= 0
    count = jnp.maximum(total(jnp.sum(labelled)), 1).astype(jnp.float32)

    def loss_fn(p):
        logits = feats @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        return total(jnp.sum(jnp.where(labelled, ce, 0.0))) / count, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(probe["params"])
    correct = total(jnp.sum(labelled & (jnp.argmax(logits, -1) == labels)))
    updates, opt_state = probe_tx.update(grads, probe["opt_state"], probe["params"])
    new = {"params": optax.apply_updates(probe["params"], updates), "opt_state": opt_state}
    return new, {"probe_loss": loss, "probe_top1": correct / count}


def make_train_step(model: BarlowTwins, tx: optax.GradientTransformation,
                    loss_cfg: ml_collections.ConfigDict, mesh,
                    learning_rate: Optional[optax.Schedule] = None,
                    make_views: Optional[Callable[[dict], dict]] = None,
                    bias_learning_rate: Optional[optax.Schedule] = None,
                    probe_tx: Optional[optax.GradientTransformation] = None,
                    xla_options: Optional[dict] = None,
                    fuse_views: bool = False) -> Callable:
    """jit(shard_map(step)): (TrainState, global batch) -> (TrainState, metrics).

    The model must be built with axis_name=parallel.BATCH_AXIS. The batch holds "view_a"
    and "view_b", or whatever `make_views` (the on-device augmentation, a per-device
    function of the batch) turns into them: it then runs as its own jit(shard_map) program
    just before the step's (`parallel.sharded_map`), which XLA:CPU runs faster than one
    fused program, and the returned function carries the two as `.views` and `.update`
    (fuse_views=True: one program, views made first thing in the step, as a comparison).
    Metrics are replicated scalars: loss, the objective's named scalars (Barlow Twins:
    on_diag, off_diag, c_diag_mean, c_offdiag_rms; see `losses.barlow_twins_terms`),
    grad_norm, learning_rate / bias_learning_rate (the rates of the weights and of
    biases and BatchNorm at this step) where the schedules are given, and probe_loss /
    probe_top1 when the state holds an online probe (then the batch needs "label" and
    probe_tx is its optimiser). xla_options: XLA compiler options (None:
    `parallel.compiler_options` of the mesh's platform; {}: XLA's defaults).
    """
    if model.axis_name != parallel.BATCH_AXIS:
        raise ValueError(f"make_train_step needs a model built with axis_name="
                         f"{parallel.BATCH_AXIS!r} (create_model(config, parallel.BATCH_AXIS)) "
                         f"for cross-replica BatchNorm; got {model.axis_name!r}.")

    def step(state: TrainState, batch: dict):
        labels = batch.get("label")
        if fuse_views and make_views is not None:
            batch = make_views(batch)
        loss, grads, new_stats, terms, features = loss_and_grads(
            state.params, state.batch_stats, batch, model=model, loss_cfg=loss_cfg,
            axis_name=parallel.BATCH_AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
        probe = state.probe
        if probe is not None:
            probe, probe_metrics = online_probe_step(probe, probe_tx, features, labels,
                                                     parallel.BATCH_AXIS)
            metrics.update(probe_metrics)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step)
        if bias_learning_rate is not None:
            metrics["bias_learning_rate"] = bias_learning_rate(state.step)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=new_stats,
                               opt_state=opt_state, probe=probe)
        return new_state, metrics

    update = parallel.data_parallel(step, mesh, num_replicated_args=1, donate_state=True,
                                    xla_options=xla_options)
    if make_views is None or fuse_views:
        return update
    views = parallel.sharded_map(make_views, mesh, xla_options=xla_options)

    def augment_and_update(state: TrainState, batch: dict):
        inputs = views(batch)
        if "label" in batch:
            inputs = {**inputs, "label": batch["label"]}
        return update(state, inputs)

    augment_and_update.views = views
    augment_and_update.update = update
    return augment_and_update


def pretrain_num_classes(source) -> int:
    """Classes of the pretraining split's labels; 0 when it has none (the online probe is
    then off)."""
    labels = getattr(source, "labels", None)
    if labels is not None and not np.any(np.asarray(labels) >= 0):
        return 0
    return int(getattr(source, "num_classes", 0) or 0)


def make_diagnose_fn(model: BarlowTwins, make_views: Optional[Callable[[dict], dict]] = None,
                     heatmap_features: int = 128, mesh=None) -> Callable:
    """jit((params, batch_stats, global batch) -> diagnostics) for collapse monitoring.

    Runs both views through the network in training mode (batch statistics; the running
    ones are not updated) and returns {"embedding": spectrum_stats of view A's [N, D]
    embeddings, "features": the same of its [N, F] backbone features, "c_block": the
    cross-correlation of the first `heatmap_features` embedding features [h, h]}.
    model: built without axis_name (jit partitions the global batch itself). With a mesh,
    the outputs are replicated on it, so every process can read them.
    """
    def diagnose(params, batch_stats, batch):
        if make_views is not None:
            batch = make_views(batch)
        variables = {"params": params, "batch_stats": batch_stats}
        out_a, _ = model.apply(variables, batch["view_a"], train=True, predict=False,
                               mutable=["batch_stats"])
        out_b, _ = model.apply(variables, batch["view_b"], train=True, predict=False,
                               mutable=["batch_stats"])
        z_a = out_a["embedding"].astype(jnp.float32)
        z_b = out_b["embedding"].astype(jnp.float32)
        h = min(heatmap_features, z_a.shape[1])
        return {"embedding": diagnostics.spectrum_stats(z_a),
                "features": diagnostics.spectrum_stats(out_a["features"].astype(jnp.float32)),
                "c_block": losses.cross_correlation(z_a[:, :h], z_b[:, :h])}

    if mesh is None:
        return jax.jit(diagnose)
    return jax.jit(diagnose, out_shardings=parallel.replicated(mesh))


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsLog:
    """metrics.jsonl (one JSON line per logging step), TensorBoard events, a progress line;
    all three from process 0 only (write_files).

    pairs/s is measured over the interval since the previous line (the first interval
    includes compilation); the ETA extrapolates that rate.
    """

    def __init__(self, workdir: str, total_steps: int, global_batch: int, *,
                 steps_per_epoch: int = 0, write_files: bool = True,
                 eval_split: str = "test",
                 progress: Optional[tuple] = None):
        self.path = os.path.join(workdir, "metrics.jsonl") if write_files else None
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.steps_per_epoch = steps_per_epoch
        self.write_files = write_files
        self.eval_split = eval_split
        # the objective's (key, label, format) on the progress line; default Barlow Twins'
        self.progress = losses.OBJECTIVES["barlow_twins"].progress if progress is None \
            else progress
        self.writer = event_writer.create(workdir) if write_files else None
        self._last = (time.perf_counter(), 0)

    def start(self, step: int):
        self._last = (time.perf_counter(), step)

    def write(self, step: int, scalars: dict) -> dict:
        now = time.perf_counter()
        t0, s0 = self._last
        self._last = (now, step)
        seconds_per_step = (now - t0) / max(step - s0, 1)
        row = {"step": step, **{k: float(v) for k, v in scalars.items()},
               "pairs_per_s": self.global_batch / max(seconds_per_step, 1e-9),
               "step_time_s": seconds_per_step}
        if self.steps_per_epoch:
            row["epoch"] = step / self.steps_per_epoch
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, row)
        if not self.write_files:
            return row   # processes other than 0 stay quiet
        eta = _format_eta((self.total_steps - step) * seconds_per_step)
        lr = f" | lr {row['learning_rate']:.3g}" if "learning_rate" in row else ""
        epoch = f" (epoch {row['epoch']:.2f})" if "epoch" in row else ""
        probe = f" | probe acc {row['probe_top1']:.3f}" if "probe_top1" in row else ""
        terms = " ".join(f"{label} {row[key]:{fmt}}" for key, label, fmt in self.progress
                         if key in row)
        terms = f" | {terms}" if terms else ""
        print(f"step {step:>6}/{self.total_steps}{epoch} | loss {row['loss']:.4f}{terms}{lr}"
              f"{probe} | {row['pairs_per_s']:,.0f} pairs/s | ETA {eta}", flush=True)
        return row

    def write_monitor(self, step: int, knn: dict) -> dict:
        """The kNN monitor's {"knn_top1", "knn_top5", "seconds"} -> a metrics.jsonl row
        {"step", "epoch", "monitor_knn_top1", "monitor_knn_top5", "monitor_seconds"},
        TensorBoard scalars and a progress line. The pairs/s of the next training line
        leave the monitor's time out."""
        row = {"step": step, **{f"monitor_{k}": float(v) for k, v in knn.items()}}
        if self.steps_per_epoch:
            row["epoch"] = step / self.steps_per_epoch
        self._last = (time.perf_counter(), step)
        if not self.write_files:
            return row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, {k: v for k, v in row.items() if k != "step"})
        epoch = f" (epoch {row['epoch']:.2f})" if "epoch" in row else ""
        print(f"step {step:>6}/{self.total_steps}{epoch} | kNN monitor: top-1 "
              f"{100 * row['monitor_knn_top1']:.2f}% on the {self.eval_split} split "
              f"({row['monitor_seconds']:.1f} s)", flush=True)
        return row

    def write_diagnostics(self, step: int, diagnosis: dict) -> Optional[str]:
        """Collapse diagnostics of `make_diagnose_fn` -> diagnostics.jsonl, TensorBoard
        scalars and the C heatmap image; prints and returns a warning if collapsing."""
        row = {"step": step}
        warnings = []
        for name in ("embedding", "features"):
            row.update({f"{name}_{k}": v for k, v in
                        diagnostics.scalars(diagnosis[name]).items()})
            verdict = diagnostics.collapse_verdict(diagnosis[name])
            if verdict:
                warnings.append(f"{name}s: {verdict}")
        if not self.write_files:
            return None
        with open(os.path.join(os.path.dirname(self.path), "diagnostics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, {f"diagnostics/{k}": v for k, v in row.items()
                                             if k != "step"})
            self.writer.write_images(step, {"cross_correlation": diagnostics.correlation_heatmap(
                diagnosis["c_block"])[None]})
        if warnings:
            message = f"warning: step {step}: collapse? " + "; ".join(warnings)
            print(message, flush=True)
            return message
        return None

    def close(self):
        if self.writer is not None:
            self.writer.close()   # flushes


def _check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume checkpoints written for another model (shapes would not fit)."""
    saved_path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.exists(saved_path) and os.path.isdir(ckpt_dir)
            and any(d.isdigit() for d in os.listdir(ckpt_dir))):
        return
    with open(saved_path) as f:
        saved = json.load(f)
    now = json.loads(config.to_json_best_effort())
    # Fields added to the model since the run was saved held their defaults then.
    defaults = json.loads(config_lib.base_config().to_json_best_effort())["model"]
    saved_model = {**defaults, **saved.get("model", {})}
    changed = [f"model.{k}" for k in sorted(set(saved_model) | set(now["model"]))
               if saved_model.get(k) != now["model"].get(k)]
    if changed:
        raise config_lib.ConfigError(
            f"{workdir!r} holds checkpoints of another model ({', '.join(changed)} differ from "
            "its config.json). Resume with the config that wrote them, or start in a new "
            "--workdir.")


def check_workdir(workdir: str) -> None:
    """Raises ConfigError if workdir cannot be a run's directory (it is a file, or a path
    through a file); writes nothing."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise config_lib.ConfigError(
            f"--workdir {workdir!r} is a file, not a directory: a run writes checkpoints, "
            "metrics and results into its workdir. Choose another --workdir.")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise config_lib.ConfigError(
            f"--workdir {workdir!r} cannot be created: {parent!r} is a file. Choose another "
            "--workdir.")


def _saved_steps(workdir: str) -> list[int]:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def finished_results(workdir: str, total_steps: int, evaluated: bool) -> Optional[dict]:
    """The results of a run in workdir that is already finished (a checkpoint at
    total_steps, backbone.msgpack, and results.json when `evaluated`), else None."""
    steps = _saved_steps(workdir)
    if not steps or steps[-1] != total_steps:
        return None
    if not os.path.exists(os.path.join(workdir, export.BACKBONE_FILE)):
        return None
    if not evaluated:
        return {}
    try:
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if "linear_top1" in results else None


def write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Creates workdir and writes config.json (atomically), printing what a resumed run
    changes against the config.json it had. An unwritable workdir is one ConfigError."""
    path = os.path.join(workdir, "config.json")
    if _saved_steps(workdir) and os.path.exists(path):
        try:
            with open(path) as f:
                saved = ml_collections.ConfigDict(json.load(f))
            changes = config_lib.diff(saved, ml_collections.ConfigDict(
                json.loads(config.to_json_best_effort())))
        except (OSError, ValueError):
            changes = []
        if changes:
            print("Resuming with a changed config (config.json is updated):\n  "
                  + "\n  ".join(changes), flush=True)
    try:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(tmp, path)
    except OSError as e:
        raise config_lib.ConfigError(
            f"Cannot write into --workdir {workdir!r} ({e.strerror or e}): choose a "
            "directory you can write to.") from None


def _check_finite(loss, step: int) -> None:
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"The loss became {loss} at step {step}. Lower optim.lr_weights or use "
            "model.dtype='float32', then rerun: training resumes from the last checkpoint, "
            "which holds finite values.")


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint of the step it had reached."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"Stopped by SIGTERM at step {step}; the checkpoint of step {step} is "
                         f"saved in {directory!r}. Rerun the same command to resume.")
        self.step = step


class PreemptionWatch:
    """Turns SIGTERM (a scheduler's preemption notice) into a flag the training loop polls.

    Installs its handler on entering (main thread only) and restores the previous one on
    leaving. With several processes, `requested` is true on every process as soon as one
    of them got the signal, so that all save the same step together.
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrains on config.data, checkpoints into workdir, then evaluates.

    Writes config.json, metrics.jsonl, TensorBoard events, Orbax checkpoints,
    backbone.msgpack and results.json into workdir, and returns the results dict.
    """
    from bt_jax import evaluate  # pylint: disable=import-outside-toplevel
    from bt_jax import monitor as monitor_lib  # pylint: disable=import-outside-toplevel
    from bt_jax.data import datasets, pipeline  # pylint: disable=import-outside-toplevel

    # Everything is checked before anything is written: a relaunch that fails leaves the
    # workdir as it was, and a first run that fails leaves nothing.
    config_lib.validate(config)
    chief = jax.process_index() == 0   # the one process that writes files on a cluster
    check_workdir(workdir)
    _check_resumable(workdir, config)
    mesh = parallel.make_mesh()
    parallel.per_device_batch_size(config.batch_size, mesh)
    source = datasets.pretrain_split(config.data, config.seed)
    pipeline.require_packages(config, source)
    spe = pipeline.steps_per_epoch(source, config.batch_size, jax.process_count())
    total_steps = config.num_steps or config.num_epochs * spe
    stats = pipeline.normalization_stats(source)
    if config.eval.enabled:   # loaded first: a missing test split fails before training
        train_split, test_split = datasets.labelled_splits(config.data, config.seed)
    finished = finished_results(workdir, total_steps, config.eval.enabled)
    if finished is not None:
        print(f"{workdir!r} holds a finished run (step {total_steps} of {total_steps}"
              + (", results.json" if config.eval.enabled else "") + "); nothing to do, "
              "nothing changed. Evaluate it again with `python -m bt_jax.evaluate --workdir "
              f"{workdir}`, or train for longer with a larger num_epochs / num_steps.",
              flush=True)
        return finished
    resuming = bool(_saved_steps(workdir))
    if chief and not resuming:   # a new run: its workdir and config.json first
        write_run_config(workdir, config)

    model = create_model(config, axis_name=parallel.BATCH_AXIS)
    tx = create_optimizer(config, spe, total_steps)
    rng = jax.random.key(config.seed)
    probe_classes = pretrain_num_classes(source) if config.eval.online_probe else 0
    probe_tx = online_probe_optimizer(config)
    state = init_state(create_model(config), tx, rng, config.data.image_size,
                       num_classes=probe_classes, probe_tx=probe_tx)
    init_backbone = jax.device_get(  # a host copy: the state's buffers are donated below
        backbone_variables({"params": state.params, "batch_stats": state.batch_stats}))

    manager = ckpt_lib.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                         every_steps=config.checkpoint.every_steps,
                                         keep=config.checkpoint.keep)
    state = manager.restore_or(state)   # a checkpoint that does not fit changes nothing
    if chief and resuming:
        write_run_config(workdir, config)
    start = int(state.step)
    if start:
        print(f"Resumed from step {start} of {total_steps}.", flush=True)
    state = parallel.replicate(state, mesh)

    make_views = None
    if config.data.augment_on == "device":
        from bt_jax.data import device_augment  # pylint: disable=import-outside-toplevel
        make_views = device_augment.make_view_fn(config.seed, *pipeline.view_configs(config),
                                                 *stats)
    weight_lr, bias_lr = learning_rate_schedules(config, spe, total_steps)
    train_step = make_train_step(model, tx, config.loss, mesh, learning_rate=weight_lr,
                                 make_views=make_views, bias_learning_rate=bias_lr,
                                 probe_tx=probe_tx)
    diagnose = make_diagnose_fn(create_model(config), make_views, mesh=mesh)
    diag_every = config.eval.diagnostics_every_steps
    batches = pipeline.train_batches(config, source, start_step=start,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), stats=stats)
    batches = parallel.prefetch_to_mesh(batches, mesh, config.data.prefetch_batches)
    objective = losses.get_objective(config.loss.kind)
    log = MetricsLog(workdir, total_steps, config.batch_size, steps_per_epoch=spe,
                     write_files=chief, eval_split=config_lib.eval_split_name(config),
                     progress=objective.progress)
    monitor, monitor_at = None, monitor_lib.monitor_steps(config.eval.monitor_every_epochs,
                                                          spe, total_steps)
    if monitor_at:
        probe_train = evaluate.probe_subset(train_split, config.eval.probe_train_examples,
                                            config.seed)
        monitor = monitor_lib.KnnMonitor(
            create_model(config).backbone, pipeline.eval_arrays(probe_train, *stats),
            probe_train.labels, pipeline.eval_arrays(test_split, *stats), test_split.labels,
            test_split.num_classes, config.eval)
    print(f"Training {config.model.backbone} on {config.data.name}: {len(source)} images, "
          f"batch {config.batch_size} over {mesh.size} device(s), {total_steps} steps "
          f"({spe} per epoch)" + (", online probe on" if state.probe is not None else "") + ".",
          flush=True)
    log.start(start)
    loop_start = time.perf_counter()
    last_diagnosis = None
    try:
        with PreemptionWatch() as preemption:
            for step in range(start + 1, total_steps + 1):
                batch = next(batches)
                state, metrics = train_step(state, batch)
                last = step == total_steps
                preempted = preemption.requested()
                logging_step = step % config.log_every_steps == 0 or last
                saving_step = step % config.checkpoint.every_steps == 0 or last or preempted
                if logging_step or saving_step:
                    metrics = jax.device_get(metrics)
                    _check_finite(metrics["loss"], step)  # before a save: never save NaNs
                if logging_step:
                    log.write(step, metrics)
                    manager.check_for_errors()   # a failed save stops the run early
                if (diag_every and step % diag_every == 0) or last:
                    last_diagnosis = jax.device_get(diagnose(state.params, state.batch_stats,
                                                             batch))
                    log.write_diagnostics(step, last_diagnosis)
                if step in monitor_at:
                    log.write_monitor(step, monitor(backbone_variables(
                        {"params": state.params, "batch_stats": state.batch_stats})))
                if saving_step:
                    manager.maybe_save(step, state, force=True)
                if preempted:
                    raise Preempted(step, manager.directory)
    finally:   # every way out (end, SIGTERM, NaN, error) waits for pending saves
        try:
            manager.close()   # SaveError if the last asynchronous save failed
        finally:
            log.close()
    train_seconds = time.perf_counter() - loop_start   # this process's share, if resumed
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    trained_backbone = jax.device_get(backbone_variables(variables))
    if chief:
        plots.plot_training_curves(workdir, objective.curves)
        if last_diagnosis is not None:
            diagnostics.write_pngs(workdir, spectra={
                "embeddings": last_diagnosis["embedding"]["singular_values"],
                "backbone features": last_diagnosis["features"]["singular_values"]},
                c=last_diagnosis["c_block"])
        export.write_backbone(workdir, trained_backbone, config, stats)

    if not config.eval.enabled:
        print("Evaluation disabled (eval.enabled=False): no results.json.", flush=True)
        return {}
    probe = None if state.probe is None else jax.device_get(state.probe["params"])
    results = evaluate.evaluate_all(config, create_model(config).backbone, trained_backbone,
                                    init_backbone, train_split, test_split, stats,
                                    online_probe=probe, workdir=workdir if chief else None,
                                    trained_features=monitor and monitor.last_features)
    results["train_seconds"] = train_seconds
    if chief:
        evaluate.write_results(results, workdir)
    print(evaluate.format_table(results), flush=True)
    return results
