"""Where everything of a run lives in its --workdir, Orbax's folder convention inside it,
and the one way files are written there (atomically).

    WORKDIR/config.json          the config the run was started (or last resumed) with
    WORKDIR/metrics.jsonl        one line per logging step; diagnostics.jsonl beside it
    WORKDIR/checkpoints/<step>/default/   Orbax: one folder per step, its one item
    WORKDIR/backbone.msgpack     the backbone's variables; backbone.json its preprocessing
    WORKDIR/results.json         the newest evaluation, and which weights it measured
    WORKDIR/run.lock             held while a run (or an evaluation) writes here

Imports nothing of bt_jax: every module may ask it.
"""
from __future__ import annotations

import json
import os
from typing import Union

CONFIG = "config.json"
METRICS = "metrics.jsonl"
DIAGNOSTICS = "diagnostics.jsonl"
CHECKPOINTS = "checkpoints"
BACKBONE = "backbone.msgpack"
PREPROCESSING = "backbone.json"
RESULTS = "results.json"
LOCK = "run.lock"
# The item a StandardSave writes inside Orbax's folder of a step.
ORBAX_ITEM = "default"


def path(workdir: str, name: str) -> str:
    """WORKDIR/name, e.g. path(workdir, run_dir.RESULTS)."""
    return os.path.join(workdir, name)


def checkpoints(workdir: str) -> str:
    """WORKDIR/checkpoints: what `checkpoint.CheckpointManager` manages."""
    return os.path.join(workdir, CHECKPOINTS)


def saved_steps(checkpoint_dir: str) -> list[int]:
    """The steps that have a folder in checkpoint_dir (complete saves: Orbax renames a
    step's temporary folder when it is written), oldest first; [] if it does not exist."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(d) for d in os.listdir(checkpoint_dir) if d.isdigit())


def checkpoint_item(checkpoint_dir: str, step: int) -> str:
    """The folder of the tree saved at `step`: checkpoint_dir/<step>/default."""
    return os.path.join(checkpoint_dir, str(step), ORBAX_ITEM)


def atomic_write(file_path: str, data: Union[str, bytes]) -> None:
    """Writes data (text or bytes) to file_path through a temporary file and a rename: a
    reader, or a run killed midway, never sees a half-written file."""
    tmp = file_path + ".tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, file_path)


def read_json(file_path: str):
    """The JSON value in file_path, or None where it is missing or unreadable (a run
    killed while writing it, before atomic writes)."""
    try:
        with open(file_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
