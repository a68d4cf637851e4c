"""What a run optimises: TrainState, the LARS optimizer and its schedules, the online
probe's optimizer and the fresh state at step 0."""
from __future__ import annotations

from typing import Any, Optional

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bt_jax import optim
from bt_jax.errors import ConfigError
from bt_jax.io import weights
from bt_jax.models import BarlowTwins
from bt_jax.models.factory import init_variables


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: replicated over the mesh.

    probe: the online linear probe, {"params": {"w": [F, C], "b": [C]}, "opt_state"}, or
    None when it is off (monitor.online_probe False, or unlabelled data).
    """
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    probe: Any = None


def learning_rate_schedules(optim_cfg: ml_collections.ConfigDict, global_batch: int,
                            steps_per_epoch: int,
                            total_steps: int) -> tuple[optax.Schedule, optax.Schedule]:
    """(weights, biases) warm-up + cosine schedules of config.optim (`optim_cfg`); peaks
    scaled by global_batch/256 if optim.scale_lr_by_batch."""
    o = optim_cfg
    warmup = min(int(round(o.warmup_epochs * steps_per_epoch)), total_steps)

    def sched(base):
        peak = optim.scale_lr_by_batch(base, global_batch) if o.scale_lr_by_batch else base
        return optim.warmup_cosine_schedule(peak, total_steps, warmup, o.end_lr_fraction)

    return sched(o.lr_weights), sched(o.lr_biases)


def lars_of(optim_cfg, weight_lr: optax.Schedule,
            bias_lr: optax.Schedule) -> optax.GradientTransformation:
    """LARS with config.optim's decay, momentum, eta and clipping at the given rates."""
    o = optim_cfg
    return optim.lars(weight_lr, bias_lr, weight_decay=o.weight_decay, momentum=o.momentum,
                      eta=o.eta, clip_trust_ratio=o.clip_trust_ratio)


def create_optimizer(optim_cfg: ml_collections.ConfigDict, global_batch: int,
                     steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """LARS with the warm-up + cosine schedules of config.optim (`optim_cfg`)."""
    return lars_of(optim_cfg, *learning_rate_schedules(optim_cfg, global_batch,
                                                       steps_per_epoch, total_steps))


def online_probe_optimizer(monitor_cfg: ml_collections.ConfigDict
                           ) -> optax.GradientTransformation:
    """Adam at config.monitor.online_probe_lr: robust to the scale of unnormalised backbone
    features, which changes by orders of magnitude as pretraining goes."""
    return optax.adam(monitor_cfg.online_probe_lr)


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


def init_from_file(state: TrainState, model_cfg: ml_collections.ConfigDict) -> TrainState:
    """The state with the weights of config.model.init_from (`model_cfg`): the backbone's, and the
    projector's where the file holds one of this model's shapes (else the projector keeps
    its fresh initialisation, as when fine-tuning a backbone). The optimiser's state is
    value-free at step 0 (zero momentum), so it is kept.

    Raises:
      ConfigError where the file's ResNet is not config.model's (naming the fields).
    """
    path = model_cfg.init_from
    variables, arch = weights.read_variables(path)
    bad = weights.mismatched_fields(model_cfg, weights.model_fields(variables, arch))
    if bad:
        raise ConfigError(f"model.init_from={path!r} holds another network: "
                          f"{'; '.join(bad)}. Set those fields to the weights' values.")
    parts = ["backbone"]
    if "projector" in variables["params"] and _same_shapes(
            variables["params"]["projector"], state.params["projector"]):
        parts.append("projector")
    backbone = weights.backbone_of(variables)
    loaded = {"backbone": backbone, "projector": {
        "params": variables["params"].get("projector"),
        "batch_stats": variables.get("batch_stats", {}).get("projector", {})}}
    params, stats = dict(state.params), dict(state.batch_stats)
    for part in parts:
        if not _same_shapes(loaded[part]["params"], params[part]):
            raise ConfigError(f"model.init_from={path!r}: its {part} does not fit this "
                              "config's model.")
        params[part] = jax.tree.map(jnp.asarray, loaded[part]["params"])
        if part in stats:
            stats[part] = jax.tree.map(jnp.asarray, loaded[part]["batch_stats"])
    print(f"Initialised the {' and '.join(parts)} from {path!r}.", flush=True)
    return state.replace(params=params, batch_stats=stats)


def _same_shapes(a, b) -> bool:
    return (jax.tree.structure(a) == jax.tree.structure(b) and
            all(np.shape(x) == np.shape(y) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b))))
