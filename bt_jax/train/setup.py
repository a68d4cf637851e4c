"""The one assembly of a run: (config, devices) -> what every entry point needs.

`assemble` builds, in one place and in one order, the mesh, the pretraining data (its
split, or only its shape), the batch layout, steps per epoch and the run's length, the
statistics the views are normalised with, the programs (`programs.build_programs`) and
the state (real, abstract or none). Its callers:
- the trainer (`train.loop`): the real split, the real state;
- the planner (`plan.compile`): the data's shape alone, the abstract state on compile-only
  TPU or GPU devices;
- the evaluation CLI (`bt_jax.evaluate`): the split's statistics, the random-init encoder;
- the benchmark (`experiments/benchmark.py`): a synthetic shape, the real state.
What the planner compiles and the benchmark times is what the trainer runs.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from bt_jax import config as config_lib
from bt_jax import parallel
from bt_jax.data import pipeline, sources
from bt_jax.data.layout import BatchLayout, batch_layout
from bt_jax.data.sources.base import imagenet_stats
from bt_jax.errors import ConfigError
from bt_jax.train import programs as programs_lib
from bt_jax.train.state import TrainState

STATES = ("real", "abstract", "none")


@dataclasses.dataclass(frozen=True)
class RunShape:
    """What a run needs to know of its data without reading it: examples per epoch,
    classes (the online probe), channels of stored images, and whether the pipeline holds
    the split in memory (gather_on_host) or streams it."""
    examples: int
    num_classes: int
    channels: int
    gather_on_host: bool


def run_shape(data: ml_collections.ConfigDict, examples: int = 0, classes: int = 0) -> RunShape:
    """The RunShape of config.data from its source's registered `SourceShape`; examples /
    classes (> 0) override it, and are needed where the source has none (folders, any
    "tfds:<name>")."""
    source = sources.get_source(data.name)
    shape = source.shape
    if shape is None and not (examples and classes):
        raise ConfigError(f"data.name={data.name!r} has no known size: pass --examples=N "
                          "(images per epoch) and --classes=C.")
    n = examples or shape.pretrain_examples - data.validation_examples
    return RunShape(examples=n, num_classes=classes or shape.num_classes,
                    channels=shape.channels if shape else 3,
                    gather_on_host=source.stream is None)


def pretrain_num_classes(source) -> int:
    """Classes of the pretraining split's labels; 0 when it has none (the online probe is
    then off)."""
    labels = getattr(source, "labels", None)
    if labels is not None and not np.any(np.asarray(labels) >= 0):
        return 0
    return int(getattr(source, "num_classes", 0) or 0)


def conv_impl_for(conv_impl: str, platform: str) -> str:
    """model.conv_impl as a run on `platform` resolves it. "auto" picks each layer's form
    from `jax.default_backend()` when the model is traced, which is this machine's CPU
    when planning for a TPU or GPU: off the CPU it is "xla", what "auto" gives there
    (`models.conv.choose_conv_impl`), so a plan compiles that platform's program."""
    return "xla" if conv_impl == "auto" and platform != "cpu" else conv_impl


@dataclasses.dataclass(frozen=True)
class Run:
    """What `assemble` makes of (config, devices).

    source: the pretraining split (`sources.pretrain_split`), or None where the run was
      assembled from a RunShape alone; shape: its RunShape either way.
    stats: (mean [C], std [C]) the views are normalised with.
    probe_classes: the online probe's classes (0: no probe).
    state: the TrainState at step 0 on the host ("real"), as jax.ShapeDtypeStructs
      replicated on the mesh ("abstract"), or None ("none").
    """
    mesh: jax.sharding.Mesh
    source: Optional[Any]
    shape: RunShape
    layout: BatchLayout
    steps_per_epoch: int
    total_steps: int
    stats: tuple[np.ndarray, np.ndarray]
    programs: programs_lib.TrainPrograms
    probe_classes: int
    state: Optional[TrainState]


def _shape_of(source) -> RunShape:
    """The RunShape of a pretraining split that was read."""
    images = getattr(source, "images", None)
    return RunShape(examples=len(source), num_classes=pretrain_num_classes(source),
                    channels=images.shape[-1] if images is not None else 3,
                    gather_on_host=source.gather_on_host)


def assemble(config: ml_collections.ConfigDict,
             devices: Optional[Sequence[jax.Device]] = None, *,
             shape: Optional[RunShape] = None, state: str = "real") -> Run:
    """The run of `config` on `devices` (None: every device, as the trainer's mesh).

    shape: None reads config.data's pretraining split (its statistics normalise the
      views); a RunShape assembles the run from shapes alone (the planner, the benchmark),
      with torchvision's ImageNet statistics, whose values change no program's cost.
    state: one of STATES (`Run.state`).

    Raises:
      ConfigError: an invalid config, a batch the devices do not divide, data that is not
        there.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}; got {state!r}.")
    config_lib.validate(config)
    devices = list(devices) if devices is not None else jax.devices()
    mesh = parallel.make_mesh(devices)
    parallel.per_device_batch_size(config.batch_size, mesh)
    source = None
    if shape is None:
        source = sources.pretrain_split(config.data, config.seed)
        shape = _shape_of(source)
    layout = batch_layout(config.data.augment_on, shape.gather_on_host)
    if source is not None:
        pipeline.require_packages(layout, source)
    spe = pipeline.steps_per_epoch(source if source is not None else shape.examples,
                                   config.batch_size, jax.process_count())
    total_steps = config.num_steps or config.num_epochs * spe
    stats = pipeline.normalization_stats(source) if source is not None else imagenet_stats()
    model_cfg = copy.deepcopy(config.model)
    model_cfg.conv_impl = conv_impl_for(model_cfg.conv_impl, devices[0].platform)
    built = programs_lib.build_programs(
        model_cfg, config.optim, config.loss, config.monitor, mesh,
        global_batch=config.batch_size, steps_per_epoch=spe, total_steps=total_steps,
        make_views=programs_lib.view_program(layout, config.data, config.seed, stats))
    probe_classes = shape.num_classes if config.monitor.online_probe else 0
    made = None
    if state == "real":
        made = programs_lib.initial_state(built, config.seed, config.data.image_size,
                                          probe_classes)
    elif state == "abstract":
        made = programs_lib.abstract_state(built, config.seed, config.data.image_size,
                                           probe_classes, mesh)
    return Run(mesh=mesh, source=source, shape=shape, layout=layout, steps_per_epoch=spe,
               total_steps=total_steps, stats=stats, programs=built,
               probe_classes=probe_classes, state=made)
