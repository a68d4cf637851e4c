"""Pretraining: `train_and_evaluate(config, workdir)` and the pieces it is built from.

- state.py: TrainState, the LARS optimizer and its schedules, the online probe's optimizer;
- step.py: the data-parallel train step (objective, gradients, online probe) and the
  collapse diagnostics;
- metrics_log.py: metrics.jsonl, TensorBoard and the progress line;
- workdir.py: the run's directory, its config.json, finished and foreign runs;
- preemption.py: SIGTERM as a flag the loop polls;
- setup.py: the one assembly of a run (mesh, data, layout, steps, programs, state)
  that the trainer, the planner, the evaluation CLI and the benchmark share;
- loop.py: the loop itself, orchestration only.
"""
from bt_jax.models.factory import backbone_variables, create_model, init_variables
from bt_jax.train.loop import train_and_evaluate
from bt_jax.train.metrics_log import MetricsLog
from bt_jax.train.preemption import Preempted, PreemptionWatch
from bt_jax.train.setup import Run, RunShape, assemble, pretrain_num_classes
from bt_jax.train.state import (TrainState, create_optimizer, init_probe, init_state,
                                learning_rate_schedules, online_probe_optimizer)
from bt_jax.train.step import (loss_and_grads, make_diagnose_fn, make_train_step,
                               online_probe_step, train_step_body, update_inputs)
from bt_jax.train.workdir import check_workdir, finished_results, write_run_config

__all__ = ["MetricsLog", "Preempted", "PreemptionWatch", "Run", "RunShape", "assemble", "TrainState", "backbone_variables",
           "check_workdir", "create_model", "create_optimizer", "finished_results", "init_probe",
           "init_state", "init_variables", "learning_rate_schedules", "loss_and_grads",
           "make_diagnose_fn", "make_train_step", "online_probe_optimizer", "online_probe_step",
           "pretrain_num_classes", "train_and_evaluate", "train_step_body", "update_inputs",
           "write_run_config"]
