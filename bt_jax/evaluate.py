"""Evaluates a finished or running run and writes (or updates) its results.json:

  python -m bt_jax.evaluate --workdir runs/demo [--config configs/digits.py]

or weights from a file (PyTorch's or bt_jax's, see `bt_jax.convert`) on a recipe's data:

  python -m bt_jax.evaluate --backbone resnet50.pth --config configs/imagenet.py [--workdir OUT]

The run's newest checkpoint is read (else its backbone.msgpack), and the protocols of
config.eval.protocols run on it as at the end of training (`bt_jax.evals`):
- kNN (Wu et al., CVPR 2018): cosine similarity of L2-normalised features, the k nearest
  training examples vote with weight exp(similarity / temperature);
- linear probes: the paper's (B.1: SGD on augmented views of the frozen backbone) and a
  fast one (full-batch L-BFGS softmax regression on cached, standardised features, L2
  chosen on a held-out part of the training split);
- semi-supervised fine-tuning (B.2) on 1% / 10% class-balanced label subsets.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional

import flax.linen as nn
import jax

from bt_jax import cli

from bt_jax import config as config_lib
from bt_jax import config as config_lib
from bt_jax.config import ConfigError
from bt_jax.io import checkpoint as ckpt_lib
from bt_jax.io import export, run_dir, storage, weights
from bt_jax.data import sources
from bt_jax.evals.runner import evaluate_all, format_table, write_results
from bt_jax.models.factory import backbone_variables, create_model, init_variables
from bt_jax.train import setup
from bt_jax.io.run_lock import WorkdirLock
from bt_jax.train.workdir import read_run_config


def load_run(workdir: str, model_cfg, image_size: int
             ) -> tuple[nn.Module, dict, Optional[dict], dict]:
    """(backbone, its variables, the online probe's params or None, which weights) of a
    run whose model is config.model (`model_cfg`), trained at image_size px.

    The run's final exported weights (backbone.msgpack) where no checkpoint is newer than
    them; else its newest readable checkpoint (a run still going, or stopped). An
    unreadable export is reported and the checkpoints are read instead. Which weights:
    {"file": "backbone.msgpack" | "checkpoints/<step>", "step", "digest"} (see
    `export.weights_digest`). Nothing in the workdir is written or deleted."""
    ckpt_dir = run_dir.checkpoints(workdir)
    steps = run_dir.saved_steps(ckpt_dir)
    exported = storage.exists(run_dir.path(workdir, run_dir.BACKBONE))
    step = export.exported_step(workdir) if exported else None
    if exported and (not steps or (step is not None and step >= steps[-1])):
        try:
            backbone, variables = export.load_backbone(workdir)
        except ConfigError as e:
            if not steps:
                raise
            print(f"warning: {e} Reading the newest checkpoint instead.", flush=True)
        else:
            return (backbone, variables, _probe_of_step(ckpt_dir, step, steps),
                    export.weights_record(export.BACKBONE_FILE, step, variables))
    if not steps:
        raise ConfigError(f"{workdir!r} holds neither checkpoints/ nor {export.BACKBONE_FILE}: "
                          "pass the --workdir of a training run.")
    model = create_model(model_cfg)
    manager = ckpt_lib.CheckpointManager(ckpt_dir, every_steps=1)
    try:
        step, state = manager.read_latest()
    finally:
        manager.close()
    variables = backbone_variables(state)
    want = backbone_variables(init_variables(model, jax.random.key(0), image_size))
    if jax.tree.structure(want) != jax.tree.structure(variables) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(variables))):
        raise ConfigError(f"The checkpoint at step {step} in {ckpt_dir!r} holds another "
                          "model than this config's model.* fields: evaluate with the "
                          "run's own config (leave out --config).")
    probe = state.get("probe")
    probe = None if not probe else probe["params"]
    return model.backbone, variables, probe, export.weights_record(
        f"{run_dir.CHECKPOINTS}/{step}", step, variables)


def _probe_of_step(ckpt_dir: str, step: Optional[int], steps: list[int]) -> Optional[dict]:
    """The online probe's params saved with the checkpoint of `step` (the exported weights'
    step), or None where there is none or it cannot be read: the export has no probe."""
    if step is None or step not in steps:
        return None
    try:
        state = ckpt_lib.read_tree(run_dir.checkpoint_item(ckpt_dir, step))
    except Exception:  # pylint: disable=broad-except  (Orbax raises many kinds)
        return None
    probe = state.get("probe") if isinstance(state, dict) else None
    return probe["params"] if probe else None


def evaluate_backbone(path: str, config, workdir: Optional[str] = None) -> dict:
    """Evaluates weights from a file (.pth / .pt / .safetensors / .msgpack: anything
    `python -m bt_jax.convert` reads) on the recipe's dataset with its protocols. The
    model's backbone, stem and width come from the weights; results.json goes into workdir
    if one is given."""
    if workdir is not None:
        run_dir.check_output_dir(workdir, "--workdir")   # before minutes of evaluation
    variables, arch = weights.read_variables(path, projector=False)
    variables = weights.backbone_of(variables)
    fields = weights.model_fields(variables, arch)
    changes = weights.mismatched_fields(config.model, fields)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for name, value in fields.items():
            if not weights.fits(name, config.model[name], value):
                config.model[name] = value
    config_lib.validate(config)
    print(f"Evaluating {arch} weights from {path!r} on {config.data.name}"
          + (f" (the weights set {', '.join(changes)})" if changes else "") + ".", flush=True)
    record = export.weights_record(
        path if storage.is_remote(path) else os.path.abspath(path), None, variables)
    writes = workdir is not None and jax.process_index() == 0   # tsne.png, results.json
    with _lock(workdir) if writes else contextlib.nullcontext():
        return _evaluate(config, workdir, variables, record)


def _lock(workdir: str) -> WorkdirLock:
    """The workdir's lock, for an evaluation that writes there."""
    return WorkdirLock(workdir, purpose="evaluation")


def evaluate_workdir(workdir: str, config) -> dict:
    """Evaluates a finished or stopped run and writes/updates its results.json, holding
    the workdir's lock (a run still training there holds it: WorkdirLocked)."""
    config_lib.validate(config)
    with _lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        backbone, variables, probe, weights = load_run(workdir, config.model,
                                                       config.data.image_size)
        print(f"Evaluating {export.describe_weights(weights)} of {workdir!r}.", flush=True)
        return _evaluate(config, workdir, variables, weights, backbone=backbone,
                         online_probe=probe)


def _evaluate(config, workdir: Optional[str], variables: dict, weights: dict, *,
              backbone: Optional[nn.Module] = None, online_probe: Optional[dict] = None
              ) -> dict:
    """The evaluation both entry points share: the run's assembly (`train.setup`: the
    views' statistics, the random-init encoder) on one local device, config.eval's
    protocols on `variables` (the backbone's) and the baselines, results.json into
    workdir (where given, from the chief), and the table printed."""
    run = setup.assemble(config, jax.local_devices()[:1], state="real")
    d = config.data
    train_split, test_split = sources.labelled_splits(d, config.seed)
    random_init = backbone_variables({"params": run.state.params,
                                      "batch_stats": run.state.batch_stats})
    results = evaluate_all(config.eval, backbone or run.programs.plain_model.backbone,
                           variables, jax.device_get(random_init), train_split, test_split,
                           run.stats, seed=config.seed, image_size=d.image_size,
                           split_name=sources.eval_split_name(d), online_probe=online_probe,
                           workdir=workdir)
    results["weights"] = weights
    results["evaluated"] = export.describe_weights(weights)
    if workdir is not None and jax.process_index() == 0:
        write_results(results, workdir)
    print(format_table(results), flush=True)
    return results


def config_of_workdir(workdir: str):
    """The run's config.json as today's full config (fields added since the run keep their
    defaults); ConfigError (one line) where it is missing or unreadable."""
    saved = read_run_config(workdir)   # an older layout in today's
    if saved is None:
        raise ConfigError(f"{run_dir.path(workdir, run_dir.CONFIG)!r} does not exist: pass "
                          "the --workdir of a training run, or --config.")
    config = config_lib.base_config()
    try:
        config.update_from_flattened_dict(config_lib.flatten(saved))
    except (KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"{run_dir.path(workdir, run_dir.CONFIG)!r} does not fit this "
                          f"version's config ({type(e).__name__}: {e}): pass --config "
                          "RECIPE with the run's settings.") from None
    return config


def define(values, argv: list[str]) -> None:
    """The evaluation's flags, with --config defaulting to the run's own config.json:
    without --config, --config.FIELD=VALUE overrides apply to the config the run was
    trained with."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    workdir = cli.flag_value(argv, "workdir")
    if not cli.config_file(argv) and workdir and not cli.flag_value(argv, "backbone"):
        config = config_of_workdir(workdir)
        try:   # (the overrides' flags are defined here, from the command line)
            config_flags.DEFINE_config_dict(
                "config", config, "The run's config.json; fields can be overridden, e.g. "
                "--config.eval.knn.k=20.", flag_values=values, lock_config=True,
                sys_argv=argv)
        except (AttributeError, KeyError) as e:
            raise ConfigError(cli.unknown_field_message(argv, e)) from None
    else:
        cli.define_config(values, argv, "A recipe with get_config() (default: the run's "
                          "config.json); fields can be overridden, e.g. "
                          "--config.eval.linear_sgd.epochs=10.", required=False)
    flags.DEFINE_string("workdir", None, "The run to evaluate (its backbone.msgpack or "
                        "checkpoints/, and config.json); with --backbone, where "
                        "results.json goes.", flag_values=values)
    flags.DEFINE_string("backbone", None, "Weights to evaluate instead of a run: "
                        ".pth / .pt / .safetensors / .msgpack (see bt_jax.convert).",
                        flag_values=values)


def run(values, args: list[str]) -> None:
    """python -m bt_jax.evaluate --workdir RUN [--config FILE] [--config.FIELD=VALUE ...]
    python -m bt_jax.evaluate --backbone WEIGHTS --config FILE [--workdir OUT]"""
    if args:
        raise ConfigError(f"unexpected arguments {args}: pass --workdir RUN or --backbone "
                          "WEIGHTS --config RECIPE.")
    workdir, weights = values.workdir, values.backbone
    if weights:
        if values.config is None:
            raise ConfigError("--backbone needs --config: the recipe whose dataset and "
                              "protocols evaluate the weights.")
        evaluate_backbone(weights, values.config, workdir)
        return
    if not workdir:
        raise ConfigError("Pass --workdir RUN (a training run), or --backbone WEIGHTS "
                          "--config RECIPE.")
    evaluate_workdir(workdir, values.config)


if __name__ == "__main__":
    from bt_jax.platforms import skip_absent_accelerators  # noqa: E402
    skip_absent_accelerators()   # before JAX starts a backend: no chip, no start-up noise
    sys.exit(cli.main(run, define, __doc__))
