"""Where everything of a run lives in its --workdir, Orbax's folder convention inside it,
and the one way files are written there (atomically).

    WORKDIR/config.json          the config the run was started (or last resumed) with
    WORKDIR/metrics.jsonl        one line per logging step; diagnostics.jsonl beside it
    WORKDIR/events.out.tfevents.*   TensorBoard's events, a file per launch
    WORKDIR/*.png                training_curves, spectrum, cross_correlation; tsne
    WORKDIR/checkpoints/<step>/default/   Orbax: one folder per step, its one item
    WORKDIR/backbone.msgpack     the backbone's variables; backbone.json its preprocessing
    WORKDIR/results.json         the newest evaluation, and which weights it measured
    WORKDIR/run.lock             held while a run (or an evaluation) writes here
    WORKDIR/plugins/profile/<time>/   traces of the steps config.profile names

Also the checks every command makes of the paths it will write (before writing) and of
the JSON files it reads, each failure one ConfigError line. Every read and write goes
through bt_jax.io.storage, so WORKDIR may be a local path or gs://BUCKET/... . Imports nothing
of bt_jax but storage and errors: every module may ask it.
"""
from __future__ import annotations

import json
import os
from typing import Union

from bt_jax.io import storage
from bt_jax.errors import ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
DIAGNOSTICS = "diagnostics.jsonl"
CHECKPOINTS = "checkpoints"
BACKBONE = "backbone.msgpack"
PREPROCESSING = "backbone.json"
RESULTS = "results.json"
LOCK = "run.lock"
TRAINING_CURVES = "training_curves.png"
SPECTRUM = "spectrum.png"
CROSS_CORRELATION = "cross_correlation.png"
TSNE = "tsne.png"
# TensorBoard's event files: one per launch, named by time, host and process.
EVENTS = "events.out.tfevents.*"
PROFILES = os.path.join("plugins", "profile")   # jax.profiler's traces, under the log dir
# The item a StandardSave writes inside Orbax's folder of a step.
ORBAX_ITEM = "default"


def run_files(config) -> tuple[str, ...]:
    """What a finished training run of `config` leaves in its workdir (folders end in
    "/", EVENTS is a pattern): every run's files; results.json where eval.enabled, and
    tsne.png where eval.tsne_points > 0 too; plugins/ (traces) where profile.num_steps > 0
    and the run reaches profile.start_step. README.md and docs/training.md list them per
    recipe (tests/test_run_files.py checks both against this and a tiny run)."""
    names = [CONFIG, METRICS, EVENTS, DIAGNOSTICS, TRAINING_CURVES, SPECTRUM,
             CROSS_CORRELATION, CHECKPOINTS + "/", BACKBONE, PREPROCESSING]
    if config.eval.enabled:
        names.append(RESULTS)
        if config.eval.tsne_points > 0:
            names.append(TSNE)
    if config.profile.num_steps > 0:
        names.append(PROFILES.split(os.sep)[0] + "/")
    return tuple(names)


def path(workdir: str, name: str) -> str:
    """WORKDIR/name, e.g. path(workdir, run_dir.RESULTS); WORKDIR may be gs://... ."""
    return storage.join(workdir, name)


def profile_logdir(workdir: str) -> str:
    """The log dir jax.profiler.start_trace writes under: the workdir, beside the
    TensorBoard events, so its traces land in WORKDIR/plugins/profile/<time>/, where
    TensorBoard's profile plugin reads them."""
    return workdir


def checkpoints(workdir: str) -> str:
    """WORKDIR/checkpoints: what `checkpoint.CheckpointManager` manages."""
    return storage.join(workdir, CHECKPOINTS)


def saved_steps(checkpoint_dir: str) -> list[int]:
    """The steps that have a folder in checkpoint_dir (complete saves: Orbax renames a
    step's temporary folder when it is written), oldest first; [] if it does not exist."""
    return sorted(int(d) for d in storage.listdir(checkpoint_dir) if d.isdigit())


def checkpoint_item(checkpoint_dir: str, step: int) -> str:
    """The folder of the tree saved at `step`: checkpoint_dir/<step>/default."""
    return storage.join(checkpoint_dir, str(step), ORBAX_ITEM)


def atomic_write(file_path: str, data: Union[str, bytes]) -> None:
    """Writes data (text or bytes) to file_path so that a reader, or a run killed midway,
    never sees a half-written file (storage.write_atomic)."""
    storage.write_atomic(file_path, data)


def read_json(file_path: str):
    """The JSON value in file_path, or None where it is missing or unreadable (a run
    killed while writing it, before atomic writes)."""
    try:
        return json.loads(storage.read_text(file_path))
    except (OSError, ValueError):
        return None


def read_json_object(file_path: str, fix: str = "") -> dict:
    """The JSON object in file_path; ConfigError (one line, ending with `fix`) where it
    cannot be read, is not JSON, or is not an object."""
    try:
        value = json.loads(storage.read_text(file_path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{file_path!r} cannot be read ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120]})" + (f": {fix}" if fix else ".")
                          ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{file_path!r} holds a {type(value).__name__}, not a JSON object"
                          + (f": {fix}" if fix else "."))
    return value


def check_output_dir(path: str, flag: str) -> None:
    """ConfigError (one line) unless `path` can be a directory this command writes into: not
    a file, below no file, in a place this user can write; on an object store, a known
    scheme and a bucket that answers. Writes nothing."""
    storage.check_scheme(path, flag)
    if storage.is_remote(path):
        storage.check_reachable(path, flag)
        return
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"{flag} {path!r} is a file, not a directory: choose another {flag}.")
    parent = full
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path!r} cannot be created: {parent!r} is a file. Choose "
                          f"another {flag}.")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"Cannot write into {flag} {path!r} ({parent!r} is not writable): "
                          "choose a directory you can write to.")


def check_output_file(path: str, name: str) -> None:
    """ConfigError (one line) unless a file can be written at `path`: its folder exists and
    is writable, and path is not a directory; on an object store, a known scheme and a
    bucket that answers. Writes nothing."""
    storage.check_scheme(path, name)
    if storage.is_remote(path):
        storage.check_reachable(path, name)
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"{name} {path!r} is a directory: give a file name, e.g. "
                          f"{os.path.join(path, 'backbone.safetensors')!r}.")
    if not os.path.isdir(folder):
        raise ConfigError(f"{name} {path!r}: the folder {folder!r} does not exist. Create it "
                          f"(mkdir -p {folder}) or choose another {name}.")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{name} {path!r}: the folder {folder!r} is not writable. Choose "
                          f"another {name}.")
