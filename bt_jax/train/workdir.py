"""A run's directory: checked before anything is written, its config.json, and whether it
holds a finished run or checkpoints of another model."""
from __future__ import annotations

import json
from typing import Optional

import ml_collections

from bt_jax.io import run_dir, storage
from bt_jax import config as config_lib
from bt_jax.io import export


# config.model fields that do not change the model's variables: a resume may change them.
NOT_THE_MODEL = ("init_from",)


def read_run_config(workdir: str) -> Optional[dict]:
    """The run's config.json in today's layout (`config.translate_saved`), None where there
    is none; ConfigError (one line) where it cannot be read or is not a config."""
    path = run_dir.path(workdir, run_dir.CONFIG)
    if not storage.exists(path):
        return None
    saved = run_dir.read_json_object(
        path, fix="it is the run's record of its config. Restore it (or delete it to go on "
                  "with the command line's config), or choose another --workdir.")
    return config_lib.translate_saved(saved)


def check_resumable(workdir: str, model_cfg: ml_collections.ConfigDict) -> None:
    """Refuses to resume checkpoints written for another model than config.model
    (`model_cfg`): their shapes would not fit."""
    saved = read_run_config(workdir)
    if saved is None or not saved_steps(workdir):
        return
    now_model = json.loads(model_cfg.to_json_best_effort())
    # Fields added to the model since the run was saved held their defaults then.
    model_defaults = json.loads(config_lib.base_config().to_json_best_effort())["model"]
    saved_model = {**model_defaults, **saved.get("model", {})}
    changed = [f"model.{k}" for k in sorted(set(saved_model) | set(now_model))
               if saved_model.get(k) != now_model.get(k) and k not in NOT_THE_MODEL]
    if changed:
        raise config_lib.ConfigError(
            f"{workdir!r} holds checkpoints of another model ({', '.join(changed)} differ from "
            "its config.json). Resume with the config that wrote them, or start in a new "
            "--workdir.")


def with_absent_fields(saved: dict, reference: dict) -> dict:
    """`saved` (a config as nested dicts) with every field it lacks taken from `reference`,
    at any depth; its own values are kept."""
    out = dict(saved)
    for key, value in reference.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_absent_fields(out[key], value)
    return out


def check_workdir(workdir: str) -> None:
    """Raises ConfigError if workdir cannot be a run's directory (a file, a path through a
    file, a place this user cannot write); writes nothing."""
    run_dir.check_output_dir(workdir, "--workdir")


def saved_steps(workdir: str) -> list[int]:
    """The steps checkpointed in workdir, oldest first."""
    return run_dir.saved_steps(run_dir.checkpoints(workdir))


def finished_results(workdir: str, total_steps: int, evaluated: bool) -> Optional[dict]:
    """The results of a run in workdir that is already finished (a checkpoint at
    total_steps, backbone.msgpack of that step, and when `evaluated` a results.json of
    those weights), else None. A run trained further and stopped before its export or
    during its evaluation still holds the files of its shorter run: not finished."""
    steps = saved_steps(workdir)
    if not steps or steps[-1] != total_steps:
        return None
    if not storage.exists(run_dir.path(workdir, run_dir.BACKBONE)):
        return None
    if export.exported_step(workdir) != total_steps:
        return None
    if not evaluated:
        return {}
    results = run_dir.read_json(run_dir.path(workdir, run_dir.RESULTS))
    if not isinstance(results, dict) or "linear_top1" not in results:
        return None
    weights = results.get("weights")
    if not isinstance(weights, dict) or weights.get("step") != total_steps:
        return None
    return results


def write_run_config(workdir: str, config_json: str) -> None:
    """Creates workdir and writes config.json (atomically), printing what a resumed run
    changes against the config.json it had. An unwritable workdir is one ConfigError.

    config_json: the run's config as JSON (`ConfigDict.to_json_best_effort(indent=2)`)."""
    path = run_dir.path(workdir, run_dir.CONFIG)
    saved = read_run_config(workdir) if saved_steps(workdir) else None
    if saved is not None:
        # Fields added since the run was saved held their defaults then: not a change.
        today = json.loads(config_lib.base_config().to_json_best_effort())
        changes = config_lib.diff(ml_collections.ConfigDict(with_absent_fields(saved, today)),
                                  ml_collections.ConfigDict(json.loads(config_json)))
        if changes:
            print("Resuming with a changed config (config.json is updated):\n  "
                  + "\n  ".join(changes), flush=True)
    try:
        storage.makedirs(workdir)
        run_dir.atomic_write(path, config_json)
    except OSError as e:
        raise config_lib.ConfigError(
            f"Cannot write into --workdir {workdir!r} ({e.strerror or e}): choose a "
            "directory you can write to.") from None
