"""The ablation ledger: RESULTS/runs.json, committed beside the tables, records each
finished run's overrides and row, so a table can be rebuilt (and a run skipped) on a
machine that no longer has the run's workdir (workdirs are not part of the repository)."""
from __future__ import annotations

import json
import os
from typing import Optional

from bt_jax.io.run_dir import read_json

LEDGER = "runs.json"


def read_ledger(results_dir: str) -> dict:
    """{run name: {"overrides", "row", ["references"]}} from results_dir/runs.json, with
    overrides of fields that moved under their new names (bt_jax.config.RENAMED)."""
    from bt_jax.config import RENAMED  # pylint: disable=import-outside-toplevel
    ledger = read_json(os.path.join(results_dir, LEDGER)) or {}
    for entry in ledger.values():
        if "overrides" in entry:
            entry["overrides"] = {RENAMED.get(k, k): v for k, v in entry["overrides"].items()}
    return ledger


def write_ledger(ledger: dict, results_dir: str) -> None:
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, LEDGER)
    with open(path + ".tmp", "w") as f:
        json.dump(ledger, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def ledger_entry(ledger: dict, name: str, overrides: dict) -> Optional[dict]:
    """The ledger's entry for a run with exactly these overrides, else None."""
    entry = ledger.get(name)
    if entry and entry.get("overrides") == json.loads(json.dumps(overrides)):
        return entry
    return None
