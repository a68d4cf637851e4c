"""What the paper-scale sweeps would cost on a TPU slice, from the real TPU compiler
(`bt_jax.plan`, on this CPU): every run of every sweep is compiled for the slice's
compile-only chips, giving its memory per chip against the chip's HBM, whether it fits,
and its roofline estimate of the step time, hence chip-hours for the run's length.

  python experiments/ablations.py --sweep all --scale paper --plan v5e:4x4

The chip-hours are an ESTIMATE (`bt_jax.plan.report.step_estimate`: the larger of FLOPs /
peak and bytes / HBM bandwidth, plus collective bytes / interconnect bandwidth), never a
measurement. Runs whose compiled step is the same program share one compile: their
configs differ only in fields that are constants of the program or its length
(PROGRAM_FREE). Each compile's summary is kept in a cache beside the tables, so an
interrupted budget resumes where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from typing import Callable, Optional

from bt_jax.io.run_dir import read_json

# Fields that change neither the compiled step's shapes nor its cost: its length, the
# seed, learning-rate and loss-weight constants, and what runs outside the step.
# The projector's init runs once, outside the step; host-side augmentation (data.augment
# with data.augment_on="host") runs in tf.data, outside the compiled programs.
PROGRAM_FREE = ("seed", "num_epochs", "num_steps", "log_every_steps", "optim.lr_weights",
                "optim.lr_biases", "optim.warmup_epochs", "loss.lambd",
                "loss.invariance_weight", "monitor.knn_every_epochs", "model.projector_init",
                "eval", "checkpoint")
BUDGET_FIELDS = ("sweep", "run", "setting", "global_batch", "per_chip_batch", "fits",
                 "needed_gib", "hbm_gib", "step_seconds", "steps", "chip_hours", "compile_s",
                 "chip")


def program_key(config) -> str:
    """A hash of the config without its PROGRAM_FREE fields: equal keys, equal programs."""
    tree = json.loads(config.to_json_best_effort())
    free = PROGRAM_FREE + (("data.augment",) if config.data.augment_on == "host" else ())
    for field in free:
        *parents, leaf = field.split(".")
        node = tree
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def plan_summary(plan: dict) -> dict:
    """What the budget keeps of one `bt_jax.plan.planner.make_plan` plan."""
    memory = plan["memory"]
    estimate = plan.get("estimate") or {}
    return {"fits": bool(memory["fits"]), "needed_bytes": memory["needed_bytes"],
            "hbm_bytes": memory["hbm_bytes"], "step_seconds": estimate.get("step_seconds"),
            "compile_seconds": plan.get("compile_seconds", 0.0),
            "chips": plan["run"]["num_devices"], "chip": plan["chip"]["name"]}


def run_steps(config, epoch_examples: int) -> int:
    """Optimiser steps of the run: num_steps, else num_epochs of full global batches."""
    return config.num_steps or config.num_epochs * (epoch_examples // config.batch_size)


def budget_row(sweep: str, run_name: str, setting: str, config, summary: Optional[dict],
               epoch_examples: int) -> dict:
    """One row of the budget: memory per chip, fits, estimated chip-hours of the run.
    summary None: its program is not compiled yet (fits and chip-hours None)."""
    gib = 2 ** 30
    steps = run_steps(config, epoch_examples)
    if summary is None:
        return {"sweep": sweep, "run": run_name, "setting": setting,
                "global_batch": config.batch_size, "per_chip_batch": None, "fits": None,
                "needed_gib": None, "hbm_gib": None, "step_seconds": None, "steps": steps,
                "chip_hours": None, "compile_s": None, "chip": None}
    seconds = summary["step_seconds"]
    return {"sweep": sweep, "run": run_name, "setting": setting,
            "global_batch": config.batch_size,
            "per_chip_batch": config.batch_size // summary["chips"], "fits": summary["fits"],
            "needed_gib": (None if summary["needed_bytes"] is None
                           else round(summary["needed_bytes"] / gib, 2)),
            "hbm_gib": None if summary["hbm_bytes"] is None else round(
                summary["hbm_bytes"] / gib, 2),
            "step_seconds": seconds, "steps": steps,
            "chip_hours": (None if seconds is None or not summary["fits"]
                           else seconds * steps * summary["chips"] / 3600),
            "compile_s": round(summary["compile_seconds"], 1), "chip": summary["chip"]}


def plan_budget(entries: list[tuple], topology: str, cache_path: str, *,
                plan_fn: Optional[Callable] = None, progress=print,
                max_compiles: Optional[int] = None,
                devices_and_chip: Optional[tuple] = None) -> list[dict]:
    """Budget rows of `entries` ((sweep, run name, setting, config) each) on `topology`;
    compiles each distinct program once (cached in cache_path across calls), at most
    max_compiles new ones in this call (None: all; the rest get rows that say "not
    compiled", for a later call to fill). plan_fn: (config, topology, shape,
    devices_and_chip) -> plan dict; default: the planner's. devices_and_chip: what to
    compile for; default `chips.devices_for(topology)`, made only if something compiles."""
    from bt_jax.plan import chips  # pylint: disable=import-outside-toplevel
    from bt_jax.plan.compile import run_shape  # pylint: disable=import-outside-toplevel
    if plan_fn is None:
        from bt_jax.plan import planner  # pylint: disable=import-outside-toplevel

        def plan_fn(config, topo, shape, devices_and_chip):
            return planner.make_plan(config, topo, shape, progress=progress,
                                     devices_and_chip=devices_and_chip)[0]
    cache = read_json(cache_path) or {}
    keys = {program_key(c) for *_, c in entries}
    todo = [k for k in keys if k not in cache]
    budget = len(todo) if max_compiles is None else min(max_compiles, len(todo))
    if budget and devices_and_chip is None:
        devices_and_chip = chips.devices_for(topology)
    progress(f"[budget] {topology}: {len(entries)} runs, {len(keys)} distinct programs, "
             f"{len(todo)} to compile" + (f", {budget} in this call" if budget < len(todo)
                                          else ""))
    rows, compiled = [], 0
    for sweep, name, setting, config in entries:
        key, shape = program_key(config), run_shape(config.data)
        if key not in cache and compiled < budget:
            compiled += 1
            progress(f"[budget] compiling {sweep}/{name} ({compiled} of {budget}) ...")
            cache[key] = plan_summary(plan_fn(config, topology, shape, devices_and_chip))
            os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
            with open(cache_path + ".tmp", "w") as f:
                json.dump(cache, f, indent=1, sort_keys=True)
            os.replace(cache_path + ".tmp", cache_path)
        rows.append(budget_row(sweep, name, setting, config, cache.get(key), shape.examples))
    return rows


def budget_markdown(rows: list[dict], topology: str, chip: str, command: str) -> str:
    """The budget of one slice: chip-hours per sweep and in all, then every run."""
    by_sweep: dict = {}
    for r in rows:
        by_sweep.setdefault(r["sweep"], []).append(r)
    unique = {r["run"]: r for r in rows}
    missing = sum(r["fits"] is None for r in unique.values())
    lines = [f"#### Paper-scale budget on {topology} ({chip}; estimate)", "",
             f"Command: `{command}`. Chip-hours: the roofline step-time ESTIMATE x the run's "
             "steps x chips, from the TPU compiler's FLOPs, bytes and collectives; not a "
             "measurement. A run shared by several sweeps counts in each; the total counts "
             "it once."]
    if missing:
        lines[-1] += (f" **Incomplete:** {missing} of {len(unique)} runs are not compiled "
                      "yet; the same command compiles them (the cache keeps the rest), and "
                      "the chip-hours below sum the compiled runs only.")
    lines += ["", "| sweep | runs | compiled | fit | estimated chip-hours |",
              "|---|---|---|---|---|"]

    def summary_line(label: str, items: list) -> str:
        done = [r for r in items if r["fits"] is not None]
        fit = [r for r in done if r["fits"]]
        return (f"| {label} | {len(items)} | {len(done)} | {len(fit)} | "
                f"{sum(r['chip_hours'] for r in fit):,.0f} |")
    lines += [summary_line(sweep, items) for sweep, items in by_sweep.items()]
    lines += [summary_line("all (each run once)", list(unique.values())), "",
              "| sweep | run | batch (per chip) | memory per chip | fits | est. step | steps "
              "| est. chip-hours |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["fits"] is None:
            lines.append(f"| {r['sweep']} | {r['run']} | {r['global_batch']} | not compiled "
                         f"| — | — | {r['steps']:,} | — |")
            continue
        need = "?" if r["needed_gib"] is None else f"{r['needed_gib']:.2f}"
        mem = f"{need} of {r['hbm_gib']:.2f} GiB" if r["hbm_gib"] else f"{need} GiB"
        step = "—" if r["step_seconds"] is None else f"{r['step_seconds']:.3f} s"
        hours = "does not fit" if not r["fits"] else f"{r['chip_hours']:,.0f}"
        lines.append(f"| {r['sweep']} | {r['run']} | {r['global_batch']} "
                     f"({r['per_chip_batch']}) | {mem} | {'yes' if r['fits'] else 'no'} "
                     f"| {step} | {r['steps']:,} | {hours} |")
    return "\n".join(lines) + "\n"


def write_budget(rows: list[dict], topology: str, results_dir: str, command: str,
                 docs: str = "") -> str:
    """budget_TAG.csv and .md into results_dir (TAG: the topology, ':' as '_'), and the
    table between `<!-- budget TOPOLOGY -->` markers of the docs page; returns the table."""
    from ablation_report import replace_block  # pylint: disable=import-outside-toplevel
    tag = topology.replace(":", "_")
    chip = next((r["chip"] for r in rows if r["chip"]), topology)
    table = budget_markdown(rows, topology, chip, command)
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"budget_{tag}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BUDGET_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(results_dir, f"budget_{tag}.md"), "w") as f:
        f.write(table)
    if docs:
        replace_block(docs, f"budget {topology}", table)
    return table
