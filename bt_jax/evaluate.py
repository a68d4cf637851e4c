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

import json
import os
from typing import Optional

import flax.linen as nn
import jax

from bt_jax import run_dir
from bt_jax import checkpoint as ckpt_lib
from bt_jax import config as config_lib
from bt_jax import defaults
from bt_jax import convert, export
from bt_jax.config import ConfigError
from bt_jax.data import sources, pipeline
from bt_jax.evals.runner import evaluate_all, format_table, write_results
from bt_jax.models.factory import backbone_variables, create_model, init_variables


def load_run(workdir: str, model_cfg, image_size: int
             ) -> tuple[nn.Module, dict, Optional[dict], str]:
    """(backbone, its variables, the online probe's params or None, what was read) of a
    run whose model is config.model (`model_cfg`), trained at image_size px: its newest
    readable checkpoint, else its exported backbone.msgpack. Nothing in the workdir is
    written or deleted."""
    ckpt_dir = run_dir.checkpoints(workdir)
    model = create_model(model_cfg)
    if run_dir.saved_steps(ckpt_dir):
        manager = ckpt_lib.CheckpointManager(ckpt_dir, every_steps=1)
        try:
            step, state = manager.read_latest()
        finally:
            manager.close()
        variables = backbone_variables(state)
        want = backbone_variables(init_variables(
            model, jax.random.key(0), image_size))
        if jax.tree.structure(want) != jax.tree.structure(variables) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(want),
                                                   jax.tree.leaves(variables))):
            raise ConfigError(f"The checkpoint at step {step} in {ckpt_dir!r} holds another "
                              "model than this config's model.* fields: evaluate with the "
                              "run's own config (leave out --config).")
        probe = state.get("probe")
        probe = None if not probe else probe["params"]
        return model.backbone, variables, probe, f"checkpoint of step {step}"
    if os.path.exists(run_dir.path(workdir, run_dir.BACKBONE)):
        backbone, variables = export.load_backbone(workdir)
        return backbone, variables, None, export.BACKBONE_FILE
    raise ConfigError(f"{workdir!r} holds neither checkpoints/ nor {export.BACKBONE_FILE}: "
                      "pass the --workdir of a training run.")


def evaluate_backbone(path: str, config, workdir: Optional[str] = None) -> dict:
    """Evaluates weights from a file (.pth / .pt / .safetensors / .msgpack: anything
    `python -m bt_jax.convert` reads) on the recipe's dataset with its protocols. The
    model's backbone, stem and width come from the weights; results.json goes into workdir
    if one is given."""
    variables, arch = convert.read_variables(path, projector=False)
    variables = convert.backbone_of(variables)
    fields = convert.model_fields(variables, arch)
    changes = convert.mismatched_fields(config.model, fields)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for name, value in fields.items():
            if not convert.fits(name, config.model[name], value):
                config.model[name] = value
    defaults.validate(config)
    print(f"Evaluating {arch} weights from {path!r} on {config.data.name}"
          + (f" (the weights set {', '.join(changes)})" if changes else "") + ".", flush=True)
    d = config.data
    train_split, test_split = sources.labelled_splits(d, config.seed)
    stats = pipeline.normalization_stats(sources.pretrain_split(d, config.seed))
    model = create_model(config.model)
    random_init = backbone_variables(init_variables(
        model, jax.random.key(config.seed), d.image_size))
    if workdir is not None and jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)   # tsne.png and results.json go there
    results = evaluate_all(config.eval, model.backbone, variables,
                           jax.device_get(random_init), train_split, test_split, stats,
                           seed=config.seed, image_size=d.image_size,
                           split_name=sources.eval_split_name(d), workdir=workdir)
    results["evaluated"] = os.path.abspath(path)
    if workdir is not None and jax.process_index() == 0:
        write_results(results, workdir)
    print(format_table(results), flush=True)
    return results


def evaluate_workdir(workdir: str, config) -> dict:
    """Evaluates a finished or running run and writes/updates its results.json."""
    defaults.validate(config)
    backbone, variables, probe, what = load_run(workdir, config.model, config.data.image_size)
    print(f"Evaluating {what} of {workdir!r}.", flush=True)
    d = config.data
    train_split, test_split = sources.labelled_splits(d, config.seed)
    stats = pipeline.normalization_stats(sources.pretrain_split(d, config.seed))
    random_init = backbone_variables(init_variables(
        create_model(config.model), jax.random.key(config.seed), d.image_size))
    results = evaluate_all(config.eval, backbone, variables, jax.device_get(random_init),
                           train_split, test_split, stats, seed=config.seed,
                           image_size=d.image_size, split_name=sources.eval_split_name(d),
                           online_probe=probe, workdir=workdir)
    results["evaluated"] = what
    if jax.process_index() == 0:
        write_results(results, workdir)
    print(format_table(results), flush=True)
    return results


def config_of_workdir(workdir: str):
    path = run_dir.path(workdir, run_dir.CONFIG)
    if not os.path.exists(path):
        raise config_lib.ConfigError(f"{path!r} does not exist: pass the --workdir of a "
                                     "training run, or --config.")
    with open(path) as f:
        saved = config_lib.translate_saved(json.load(f))   # an older layout in today's
    config = defaults.base_config()   # fields added since the run keep their defaults
    config.update_from_flattened_dict(config_lib.flatten(saved))
    return config


def main(argv) -> None:
    """python -m bt_jax.evaluate --workdir RUN [--config FILE --config.FIELD=VALUE]
    python -m bt_jax.evaluate --backbone WEIGHTS --config FILE [--workdir OUT]"""
    import sys  # pylint: disable=import-outside-toplevel
    from absl import flags, logging  # pylint: disable=import-outside-toplevel
    logging.set_verbosity(logging.WARNING)   # Orbax logs every read at INFO
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    workdir, weights = flags.FLAGS.workdir, flags.FLAGS.backbone
    try:
        if weights:
            if not flags.FLAGS.config:
                raise ConfigError("--backbone needs --config: the recipe whose dataset and "
                                  "protocols evaluate the weights.")
            evaluate_backbone(weights, flags.FLAGS.config, workdir)
            return
        if not workdir:
            raise ConfigError("Pass --workdir RUN (a training run), or --backbone WEIGHTS "
                              "--config RECIPE.")
        config = flags.FLAGS.config or config_of_workdir(workdir)
        evaluate_workdir(workdir, config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # noqa: E402
    from ml_collections import config_flags  # noqa: E402
    config_flags.DEFINE_config_file(
        "config", None, "A recipe with get_config() (default: the run's config.json); "
        "fields can be overridden, e.g. --config.eval.linear_sgd.epochs=10.", lock_config=True)
    absl_flags.DEFINE_string("workdir", None, "The run to evaluate (its checkpoints/ or "
                             "backbone.msgpack, and config.json); with --backbone, where "
                             "results.json goes.")
    absl_flags.DEFINE_string("backbone", None, "Weights to evaluate instead of a run: "
                             ".pth / .pt / .safetensors / .msgpack (see bt_jax.convert).")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bt_jax import cli  # noqa: E402
    app.run(main, flags_parser=cli.parse_flags)
