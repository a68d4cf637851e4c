"""The programs a run compiles, built once from their sub-configs: the model, LARS and
its schedules, the online probe's optimiser, the on-device augmentation and the train step.

`train.setup.assemble` builds them for every entry point: the trainer (`train.loop`) runs
them; the planner (`bt_jax.plan`) compiles the same objects for compile-only TPU or GPU
devices, from shapes alone (`abstract_state`, `abstract_batch`). One code path: what the
planner measures is what the trainer runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from bt_jax import parallel
from bt_jax.data import device_augment
from bt_jax.data.layout import BatchLayout
from bt_jax.data.views import view_configs
from bt_jax.models import BarlowTwins
from bt_jax.models.factory import create_model
from bt_jax.train.state import (TrainState, init_state, lars_of,
                                learning_rate_schedules, online_probe_optimizer)
from bt_jax.train.step import compose_step, make_step_programs


@dataclasses.dataclass(frozen=True)
class TrainPrograms:
    """What `build_programs` makes.

    model: the BarlowTwins network with cross-replica BatchNorm (axis "batch"), which the
      step runs; plain_model: the same network without the axis (initialisation,
      diagnostics, evaluation).
    make_views: the per-device augmentation (`view_program`), or None where the host makes
      the views.
    views_step, update_step: the two compiled programs (`step.make_step_programs`);
      train_step: (TrainState, global batch) -> (TrainState, metrics), the two chained.
    """
    model: BarlowTwins
    plain_model: BarlowTwins
    tx: optax.GradientTransformation
    probe_tx: optax.GradientTransformation
    weight_lr: optax.Schedule
    bias_lr: optax.Schedule
    make_views: Optional[Callable[[dict], dict]]
    views_step: Optional[Callable]     # jit(shard_map(make_views)), or None
    update_step: Callable              # jit(shard_map(the step body))
    train_step: Callable               # the two chained: what the loop calls


def view_program(layout: BatchLayout, data_cfg: ml_collections.ConfigDict, seed: int,
                 stats) -> Optional[Callable[[dict], dict]]:
    """The per-device augmentation of a batch in `layout` (config.data's views, normalised
    with stats: mean [3], std [3]), or None where the host makes the views."""
    if not layout.views_on_device:
        return None
    return device_augment.make_view_fn(seed, *view_configs(data_cfg), *stats)


def build_programs(model_cfg: ml_collections.ConfigDict, optim_cfg: ml_collections.ConfigDict,
                   loss_cfg: ml_collections.ConfigDict, monitor_cfg: ml_collections.ConfigDict,
                   mesh, *, global_batch: int, steps_per_epoch: int, total_steps: int,
                   make_views: Optional[Callable[[dict], dict]] = None) -> TrainPrograms:
    """The run's model (config.model), LARS and its schedules (config.optim, global_batch),
    the online probe's optimiser (config.monitor) and the train step of config.loss for
    `mesh`, after `make_views` (`view_program`) where the device makes the views."""
    model = create_model(model_cfg, axis_name=parallel.BATCH_AXIS)
    weight_lr, bias_lr = learning_rate_schedules(optim_cfg, global_batch, steps_per_epoch,
                                                 total_steps)
    tx = lars_of(optim_cfg, weight_lr, bias_lr)      # the schedules, built once
    probe_tx = online_probe_optimizer(monitor_cfg)
    views_step, update_step = make_step_programs(
        model, tx, loss_cfg, mesh, learning_rate=weight_lr, make_views=make_views,
        bias_learning_rate=bias_lr, probe_tx=probe_tx)
    return TrainPrograms(model=model, plain_model=create_model(model_cfg), tx=tx,
                         probe_tx=probe_tx, weight_lr=weight_lr, bias_lr=bias_lr,
                         make_views=make_views, views_step=views_step,
                         update_step=update_step,
                         train_step=compose_step(views_step, update_step))


def initial_state(programs: TrainPrograms, seed: int, image_size: int,
                  probe_classes: int) -> TrainState:
    """The fresh TrainState at step 0 (an online probe where probe_classes > 0)."""
    return init_state(programs.plain_model, programs.tx, jax.random.key(seed), image_size,
                      num_classes=probe_classes, probe_tx=programs.probe_tx)


def abstract_state(programs: TrainPrograms, seed: int, image_size: int, probe_classes: int,
                   mesh) -> Any:
    """The TrainState as jax.ShapeDtypeStructs replicated on `mesh`: nothing is
    initialised or materialised (`jax.eval_shape`)."""
    shapes = jax.eval_shape(lambda: initial_state(programs, seed, image_size, probe_classes))
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)


def abstract_batch(layout: BatchLayout, global_batch: int, image_size: int, channels: int,
                   mesh) -> dict:
    """The pipeline's global batch in `layout` (`BatchLayout.shapes`) as
    jax.ShapeDtypeStructs split over the mesh's "batch" axis."""
    sharding = parallel.batch_sharded(mesh)
    return {k: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)
            for k, (shape, dtype) in layout.shapes(global_batch, image_size,
                                                   channels).items()}
