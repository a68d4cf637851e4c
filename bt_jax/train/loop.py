"""train_and_evaluate(config, workdir): the training loop, orchestration only."""
from __future__ import annotations

import contextlib
import time

import jax
import ml_collections
import numpy as np

from bt_jax.io import run_dir
from bt_jax.io import checkpoint as ckpt_lib
from bt_jax.io import export
from bt_jax import diagnostics, losses, parallel, plots, progress
from bt_jax.data import sources, pipeline
from bt_jax.data.views import view_configs
from bt_jax.evals import monitor as monitor_lib
from bt_jax.evals.common import probe_subset
from bt_jax.evals.runner import (evaluate_all, evaluations_off_line, format_table,
                                 write_results)
from bt_jax.models.factory import backbone_variables
from bt_jax.train.metrics_log import MetricsLog
from bt_jax.train.preemption import Preempted, PreemptionWatch
from bt_jax.train.profile import StepTrace
from bt_jax.train import setup
from bt_jax.train.state import init_from_file
from bt_jax.train.step import compose_step, make_diagnose_fn
from bt_jax.io.run_lock import WorkdirLock
from bt_jax.train.workdir import (check_resumable, check_workdir, finished_results,
                                  read_run_config, saved_steps, write_run_config)


def _check_finite(loss, step: int) -> None:
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"The loss became {loss} at step {step}. Lower optim.lr_weights or use "
            "model.dtype='float32', then rerun: training resumes from the last checkpoint, "
            "which holds finite values.")


def _say(message: str) -> None:
    """A line of the trainer's output, begun with a capital."""
    print(message[:1].upper() + message[1:], flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Pretrains on config.data, checkpoints into workdir, then evaluates.

    Writes config.json, metrics.jsonl, TensorBoard events, Orbax checkpoints,
    backbone.msgpack and results.json into workdir, and returns the results dict.
    """

    # Everything is checked before anything is written: a relaunch that fails leaves the
    # workdir as it was, and a first run that fails leaves nothing.
    check_workdir(workdir)
    read_run_config(workdir)   # a corrupt config.json is one line, before any work
    run = setup.assemble(config)
    splits = None
    if config.eval.enabled:   # loaded first: a missing test split fails before training
        splits = sources.labelled_splits(config.data, config.seed)
    # One writer per workdir: the chief (the one process that writes run files) holds its
    # lock from here to the end; a run that fails before writing anything leaves nothing.
    chief = jax.process_index() == 0
    with WorkdirLock(workdir, purpose="training") if chief else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir, run, splits)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, run: setup.Run,
                        splits) -> dict:
    """train_and_evaluate once the config, the data and the workdir are checked (and, on
    the chief, the workdir's lock held)."""
    chief = jax.process_index() == 0
    check_resumable(workdir, config.model)
    mesh, source, spe, total_steps = run.mesh, run.source, run.steps_per_epoch, run.total_steps
    stats, programs, layout = run.stats, run.programs, run.layout
    train_split, test_split = splits or (None, None)
    finished = finished_results(workdir, total_steps, config.eval.enabled)
    if finished is not None:
        print(f"{workdir!r} holds a finished run (step {total_steps} of {total_steps}"
              + (", results.json" if config.eval.enabled else "") + "); nothing to do, "
              "nothing changed. Evaluate it again with `python -m bt_jax.evaluate --workdir "
              f"{workdir}`, or train for longer with a larger num_epochs / num_steps.",
              flush=True)
        return finished
    resuming = bool(saved_steps(workdir))
    config_json = config.to_json_best_effort(indent=2)
    if chief and not resuming:   # a new run: its workdir and config.json first
        write_run_config(workdir, config_json)

    off = evaluations_off_line(config.monitor, config.eval)
    if off:
        print(off, flush=True)
    state = run.state
    init_backbone = jax.device_get(  # a host copy: the state's buffers are donated below
        backbone_variables({"params": state.params, "batch_stats": state.batch_stats}))
    if config.model.init_from and not resuming:
        state = init_from_file(state, config.model)

    manager = ckpt_lib.CheckpointManager(run_dir.checkpoints(workdir),
                                         every_steps=config.checkpoint.every_steps,
                                         keep=config.checkpoint.keep)
    # Placed on the mesh first, so that a checkpoint is restored straight into that
    # sharding: with several processes each reads its own devices' copy (a host's restored
    # arrays cannot move to the others' devices afterwards).
    state = parallel.replicate(state, mesh)
    state = manager.restore_or(state)   # a checkpoint that does not fit changes nothing
    if chief and resuming:
        write_run_config(workdir, config_json)
    start = int(state.step)
    if start:
        print(f"Resumed from step {start} of {total_steps}.", flush=True)

    say = _say if chief else progress.quiet
    # Each program announces its compile (on its first call): a minutes-long compile of a
    # large model on a pod slice is not mistaken for a hang.
    views_step = programs.views_step and progress.CompilesAhead(
        "the on-device augmentation", programs.views_step, say)
    update_step = progress.CompilesAhead("the train step", programs.update_step, say)
    train_step = compose_step(views_step, update_step)
    diagnose = progress.CompilesAhead("the collapse diagnostics", make_diagnose_fn(
        programs.plain_model, programs.make_views, mesh=mesh), say)
    diag_every = config.monitor.diagnostics_every_steps
    batches = pipeline.train_batches(
        source, layout, view_configs(config.data), seed=config.seed,
        global_batch=config.batch_size, shuffle_buffer=config.data.shuffle_buffer,
        start_step=start, process_index=jax.process_index(),
        process_count=jax.process_count(), stats=stats)
    batches = parallel.prefetch_to_mesh(batches, mesh, config.data.prefetch_batches)
    objective = losses.get_objective(config.loss.kind)
    eval_split = sources.eval_split_name(config.data)
    log = MetricsLog(workdir, total_steps, config.batch_size, steps_per_epoch=spe,
                     write_files=chief, eval_split=eval_split, progress=objective.progress)
    monitor, monitor_at = None, monitor_lib.monitor_steps(
        monitor_lib.knn_monitor_epochs(config.monitor, config.eval), spe, total_steps)
    if monitor_at:
        probe_train = probe_subset(train_split, config.eval.probe_train_examples,
                                   config.seed)
        monitor = monitor_lib.KnnMonitor(
            programs.plain_model.backbone, pipeline.eval_arrays(probe_train, *stats),
            probe_train.labels, pipeline.eval_arrays(test_split, *stats), test_split.labels,
            test_split.num_classes, config.eval.knn, config.eval.batch_size, printer=say)
    print(f"Training {config.model.backbone} on {config.data.name}: {len(source)} images, "
          f"batch {config.batch_size} over {mesh.size} device(s), {total_steps} steps "
          f"({spe} per epoch)" + (", online probe on" if state.probe is not None else "") + ".",
          flush=True)
    log.start(start)
    loop_start = time.perf_counter()
    last_diagnosis = None
    trace = StepTrace(workdir, config.profile.start_step, config.profile.num_steps, chief)
    try:
        with PreemptionWatch() as preemption:
            for step in range(start + 1, total_steps + 1):
                batch = next(batches)
                trace.begin(step)
                with trace.annotation(step):
                    state, metrics = train_step(state, batch)
                if step == start + 1:   # pairs/s and the ETA leave the compiles out
                    log.leave_out(sum(p.seconds for p in (views_step, update_step) if p))
                trace.end(step, state)
                last = step == total_steps
                preempted = preemption.requested(step)
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
        trace.close()
        try:
            manager.close()   # SaveError if the last asynchronous save failed
        finally:
            log.close()
    train_seconds = time.perf_counter() - loop_start   # this process's share, if resumed
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    trained_backbone = jax.device_get(backbone_variables(variables))
    weights = export.weights_record(run_dir.BACKBONE, total_steps, trained_backbone)
    if chief:
        plots.plot_training_curves(workdir, objective.curves, title=(
            f"{config.loss.kind}: {config.model.backbone} on {config.data.name}, batch "
            f"{config.batch_size}, {total_steps} steps"), eval_split=eval_split)
        if last_diagnosis is not None:   # diagnosed at the last step
            dims = tuple(config.model.projector_dims)
            diagnostics.write_pngs(workdir, spectra={
                "embeddings of view A": last_diagnosis["embedding"]["singular_values"],
                "backbone features of view A": last_diagnosis["features"]["singular_values"]},
                c=last_diagnosis["c_block"], dim=dims[-1] if dims else None, step=total_steps)
        export.write_backbone(workdir, trained_backbone, config.model, stats,
                              image_size=config.data.image_size, dataset=config.data.name,
                              step=total_steps, digest=weights["digest"])

    if not config.eval.enabled:
        return {}
    probe = None if state.probe is None else jax.device_get(state.probe["params"])
    results = evaluate_all(config.eval, programs.plain_model.backbone, trained_backbone,
                           init_backbone, train_split, test_split, stats, seed=config.seed,
                           image_size=config.data.image_size, split_name=eval_split,
                           online_probe=probe, workdir=workdir if chief else None,
                           trained_features=monitor and monitor.last_features)
    results["train_seconds"] = train_seconds
    results["weights"] = weights
    results["evaluated"] = export.describe_weights(weights)
    if chief:
        write_results(results, workdir)
    print(format_table(results), flush=True)
    return results
