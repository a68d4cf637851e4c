"""The data-parallel train step: forward and backward of the objective, the online probe's
update, and the collapse diagnostics of one batch."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bt_jax import diagnostics, losses, parallel
from bt_jax.models import BarlowTwins
from bt_jax.train.state import TrainState


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
        if axis_name is not None:     # one float32 all-reduce per gradient, not per use
            p = parallel.to_varying(p, axis_name)
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


def train_step_body(model: BarlowTwins, tx: optax.GradientTransformation,
                    loss_cfg: ml_collections.ConfigDict,
                    learning_rate: Optional[optax.Schedule] = None,
                    bias_learning_rate: Optional[optax.Schedule] = None,
                    probe_tx: Optional[optax.GradientTransformation] = None) -> Callable:
    """The per-device step, (TrainState, this device's batch) -> (TrainState, metrics), to
    run inside shard_map over parallel.BATCH_AXIS (`make_train_step` wraps it).

    The model must be built with axis_name=parallel.BATCH_AXIS. The batch holds "view_a"
    and "view_b" (and "label" where the state holds an online probe, whose optimiser is
    probe_tx). Metrics are replicated scalars: loss, the objective's named scalars (Barlow
    Twins: on_diag, off_diag, c_diag_mean, c_offdiag_rms; see
    `losses.barlow_twins_terms`), grad_norm, learning_rate / bias_learning_rate (the rates
    of the weights and of biases and BatchNorm at this step) where the schedules are
    given, and probe_loss / probe_top1 with an online probe.
    """
    if model.axis_name != parallel.BATCH_AXIS:
        raise ValueError(f"make_train_step needs a model built with axis_name="
                         f"{parallel.BATCH_AXIS!r} (create_model(config.model, "
                         f"parallel.BATCH_AXIS)) for cross-replica BatchNorm; got "
                         f"{model.axis_name!r}.")

    def train_step(state: TrainState, batch: dict):
        loss, grads, new_stats, terms, features = loss_and_grads(
            state.params, state.batch_stats, batch, model=model, loss_cfg=loss_cfg,
            axis_name=parallel.BATCH_AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads)}
        probe = state.probe
        if probe is not None:
            probe, probe_metrics = online_probe_step(probe, probe_tx, features,
                                                     batch.get("label"), parallel.BATCH_AXIS)
            metrics.update(probe_metrics)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step)
        if bias_learning_rate is not None:
            metrics["bias_learning_rate"] = bias_learning_rate(state.step)
        new_state = TrainState(step=state.step + 1, params=params, batch_stats=new_stats,
                               opt_state=opt_state, probe=probe)
        return new_state, metrics

    return train_step


def make_step_programs(model: BarlowTwins, tx: optax.GradientTransformation,
                       loss_cfg: ml_collections.ConfigDict, mesh,
                       learning_rate: Optional[optax.Schedule] = None,
                       make_views: Optional[Callable[[dict], dict]] = None,
                       bias_learning_rate: Optional[optax.Schedule] = None,
                       probe_tx: Optional[optax.GradientTransformation] = None
                       ) -> tuple[Optional[Callable], Callable]:
    """(views, update): the two jitted programs of a step over the mesh.

    update: jit(shard_map(`train_step_body`)), (TrainState, global batch of "view_a",
    "view_b" [and "label"]) -> (TrainState, metrics), state replicated and donated.
    views: jit(shard_map(make_views)), the on-device augmentation (a per-device function
    of the pipeline's batch), or None without one. Run apart, before the update (XLA:CPU
    runs the two faster than one fused program); `compose_step` chains them.
    """
    update = parallel.data_parallel(
        train_step_body(model, tx, loss_cfg, learning_rate, bias_learning_rate, probe_tx),
        mesh, num_replicated_args=1, donate_state=True)
    views = None if make_views is None else parallel.sharded_map(make_views, mesh)
    return views, update


def compose_step(views: Optional[Callable], update: Callable) -> Callable:
    """(TrainState, pipeline batch) -> (TrainState, metrics): the views, then the update."""
    if views is None:
        return update

    def augment_and_update(state: TrainState, batch: dict):
        return update(state, update_inputs(views(batch), batch))

    return augment_and_update


def make_train_step(model: BarlowTwins, tx: optax.GradientTransformation,
                    loss_cfg: ml_collections.ConfigDict, mesh,
                    learning_rate: Optional[optax.Schedule] = None,
                    make_views: Optional[Callable[[dict], dict]] = None,
                    bias_learning_rate: Optional[optax.Schedule] = None,
                    probe_tx: Optional[optax.GradientTransformation] = None) -> Callable:
    """jit(shard_map(step)): (TrainState, global batch) -> (TrainState, metrics), the step
    of `train_step_body` over the mesh, after the on-device augmentation `make_views`
    where there is one (`make_step_programs`, `compose_step`)."""
    return compose_step(*make_step_programs(model, tx, loss_cfg, mesh, learning_rate,
                                            make_views, bias_learning_rate, probe_tx))


def update_inputs(views: dict, batch: dict) -> dict:
    """The update program's batch where the views are made on the device: the views
    {"view_a", "view_b"} and the pipeline batch's "label" (the online probe's), if any."""
    return {**views, "label": batch["label"]} if "label" in batch else dict(views)


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
