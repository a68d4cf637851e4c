"""A plan's numbers: the roofline estimate of a step, the plan dict (plan.json) and its
tables (plan.md).

The estimate per device: max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth)
for each program, plus the bytes its collectives send (ring algorithm,
`hlo.Collective.wire_bytes`) / the chip's interconnect bandwidth. It is an estimate, never
a measurement: it assumes peak rates, no overlap of communication with compute, and the
compiler's own counts.
"""
from __future__ import annotations

import json
import math

from bt_jax.io import run_dir, storage
from bt_jax.plan.chips import Chip

ESTIMATE = "roofline estimate (not a measurement)"
ESTIMATE_HEADING = "Roofline estimate (not a measurement)"   # ESTIMATE opening a sentence


def collective_seconds(summary: dict, chip: Chip) -> float:
    """Seconds the program's collectives take at the chip's bandwidths: on GPU nodes the
    bytes within a node over NVLink plus those between nodes over the network
    (`hlo.Collective.node_split`); on a TPU slice every byte over ICI; 0 where the chip
    has no interconnect figure (one CPU)."""
    if not chip.ici_bandwidth:
        return 0.0
    if chip.network_bandwidth:
        return (summary["intra_node_wire_bytes"] / chip.ici_bandwidth
                + summary["inter_node_wire_bytes"] / chip.network_bandwidth)
    return summary["wire_bytes"] / chip.ici_bandwidth


def roofline(program: dict, chip: Chip) -> dict:
    """{"compute_seconds", "memory_seconds", "collective_seconds", "seconds", "bound"} of one
    compiled program on one chip."""
    compute = program["flops"] / chip.bf16_flops
    memory = program["bytes_accessed"] / chip.hbm_bandwidth
    comm = collective_seconds(program["collective_summary"], chip)
    return {"compute_seconds": compute, "memory_seconds": memory, "collective_seconds": comm,
            "seconds": max(compute, memory) + comm,
            "bound": "compute" if compute >= memory else "memory"}


def step_estimate(programs: list, chip: Chip, per_device_batch: int, num_devices: int,
                  epoch_examples: int) -> dict:
    """The step's estimate (every program, in sequence) and what follows from it: pairs/s
    per chip, hours per epoch of epoch_examples on num_devices chips, days for 1,000."""
    parts = [roofline(p, chip) for p in programs]
    seconds = sum(p["seconds"] for p in parts)
    pairs = per_device_batch / seconds if seconds > 0 else float("inf")
    hours = epoch_examples / (pairs * num_devices) / 3600
    return {"label": ESTIMATE, "programs": parts, "step_seconds": seconds,
            "pairs_per_second_per_chip": pairs, "hours_per_epoch": hours,
            "days_per_1000_epochs": hours * 1000 / 24, "epoch_examples": epoch_examples}


def write(plan: dict, out: str) -> tuple[str, str]:
    """plan.json (every field) and plan.md (the tables) in `out`; returns their paths."""
    storage.makedirs(out)
    paths = storage.join(out, "plan.json"), storage.join(out, "plan.md")
    for path, text in zip(paths, (json.dumps(plan, indent=1, default=float), markdown(plan))):
        run_dir.atomic_write(path, text)
    return paths


def two_figures(x: float) -> str:
    """x to two significant figures, without an exponent: 0.0010, 0.043, 7.2, 660, 7,200."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = 1 - math.floor(math.log10(abs(x)))
    rounded = round(x, decimals)
    if rounded:   # a carry (9.96 -> 10.0) adds a digit before the point
        decimals = 1 - math.floor(math.log10(abs(rounded)))
    return f"{round(x, decimals):,.{max(decimals, 0)}f}"


def estimate_words(est: dict, per: str = "/") -> str:
    """The estimate's step time, pairs/s per chip, hours per epoch and days for 1,000
    epochs, each time to two significant figures; per: "/" ("ms/step") or " per "."""
    return (f"{two_figures(est['step_seconds'] * 1e3)} ms{per}step, "
            f"{est['pairs_per_second_per_chip']:,.0f} pairs/s per chip, "
            f"{two_figures(est['hours_per_epoch'])} h{per}epoch, "
            f"{two_figures(est['days_per_1000_epochs'])} days for 1,000 epochs")


def memory_words(m: dict) -> str:
    """"0.31 of 2.94 GiB (what the 2.94 is)": the memory a chip needs against its limit
    (plan["memory"])."""
    limit = f" ({m['limit']})" if m.get("limit") else ""
    have = None if m["hbm_bytes"] is None else f"{_gib(m['hbm_bytes'])} GiB"
    if m["needed_bytes"] is None:   # the compiler refused it without sizes
        return f"more than {have or 'it has'}{limit}"
    if have is None:
        return f"{_gib(m['needed_bytes'])} GiB{limit or ' (no memory figure: not compared)'}"
    return f"{_gib(m['needed_bytes'])} of {have}{limit}"


def _gib(x) -> str:
    return "-" if x is None else f"{x / 2 ** 30:.2f}"


def markdown(plan: dict) -> str:
    """plan.md: the run, memory, cost, the estimate and the collectives, as tables."""
    r, est = plan["run"], plan["estimate"]
    lines = [f"# Plan: {r['config']} on {plan['topology']}", "",
             f"Command: `{plan['command']}`", "",
             f"{r['num_devices']} x {plan['chip']['name']} ({plan['device_kind']}); batch "
             f"{r['per_device_batch']} per chip, {r['global_batch']} global; "
             f"{r['backbone']}, projector {r['projector_dims']}, {r['dtype']}, augment_on="
             f"{r['augment_on']}. Compiled by {plan['compiler']} in "
             f"{plan['compile_seconds']:.1f} s.", "",
             "## Memory per chip (GiB)", "",
             "| program | arguments | outputs | aliased | temporaries | total | code |",
             "|---|---|---|---|---|---|---|"]
    for p in plan["programs"]:
        lines.append(f"| {p['name']} | {_gib(p['argument_bytes'])} | {_gib(p['output_bytes'])} "
                     f"| {_gib(p['alias_bytes'])} | {_gib(p['temp_bytes'])} | "
                     f"{_gib(p['total_bytes'])} | {_gib(p['generated_code_bytes'])} |")
    m = plan["memory"]
    share = "" if plan.get("memory_fraction") is None else (
        f" (the {plan['memory_fraction']:.2f} of the GPU's "
        f"{_gib(plan['chip']['hbm_bytes'])} GiB JAX gives XLA: XLA_PYTHON_CLIENT_MEM_FRACTION)")
    if share:   # the GPU's share is said in full here
        m = {**m, "limit": None}
    lines += ["", f"Needed per chip: {memory_words(m)}{share}: "
              f"{'fits' if m['fits'] else 'does NOT fit'}.", ""]
    if est is None:   # the compiler refused a program: no cost, no estimate
        return "\n".join(lines + [f"The compiler refused it: {m.get('refused_by_compiler')}",
                                   ""])
    sources = sorted({p.get("cost_source", "XLA's cost analysis") for p in plan["programs"]})
    lines += [f"## Cost per chip per step and the {ESTIMATE}", "",
              f"FLOPs and bytes: {', '.join(sources)}.", "",
              "| program | TFLOP | GB accessed | collective MB sent | compute s | memory s | "
              "collective s | estimate s |", "|---|---|---|---|---|---|---|---|"]
    for p, e in zip(plan["programs"], est["programs"]):
        lines.append(f"| {p['name']} | {p['flops'] / 1e12:.3f} | {p['bytes_accessed'] / 1e9:.2f} "
                     f"| {p['collective_summary']['wire_bytes'] / 1e6:.1f} | "
                     f"{e['compute_seconds']:.4f} | {e['memory_seconds']:.4f} | "
                     f"{e['collective_seconds']:.4f} | {e['seconds']:.4f} |")
    lines += collective_lines(plan)
    lines += ["", f"{ESTIMATE_HEADING}, for epochs of "
              f"{est['epoch_examples']:,} images: {estimate_words(est, ' per ')}.", ""]
    if plan.get("measured"):
        ms = plan["measured"]
        lines += [f"Measured here: {two_figures(ms['step_seconds'] * 1e3)} ms per step "
                  f"(median of {ms['steps']}); measured / estimate = "
                  f"{ms['ratio_to_estimate']:.2f}.", ""]
    lines += max_batch_lines(plan.get("max_batch"))
    lines += ["## Collectives in the compiled HLO", "",
              "| program | kind | name | pass | operand shapes | MB | sent MB (ring) | group |",
              "|---|---|---|---|---|---|---|---|"]
    for p in plan["programs"]:
        for c in p["collectives"]:
            ops = c.get("operand_shapes", c["shapes"])
            shapes = ", ".join(ops[:4]) + (f", ... ({len(ops)})" if len(ops) > 4 else "")
            lines.append(f"| {p['name']} | {c['kind']} | {c['name']} | "
                         f"{'backward' if c['backward'] else 'forward'} | {shapes} | "
                         f"{c['bytes'] / 1e6:.3f} | {c['wire_bytes'] / 1e6:.3f} | "
                         f"{c['group_size']} {c['replica_groups'][:40]} |")
    if plan["run"].get("platform") == "gpu":   # XLA:GPU's combined all-reduces lose JAX's names
        reduced = sum(p["collective_summary"]["by_kind"].get("all-reduce", {}).get("bytes", 0)
                      for p in plan["programs"])
        reduced = (f"all-reduces: {reduced / 1e6:.1f} MB (the gradients and BatchNorm's "
                   "statistics: XLA:GPU's combined all-reduces keep no pass of their own)")
    else:
        reduced = (f"backward all-reduces: {plan['backward_all_reduce_bytes'] / 1e6:.1f} MB "
                   "(the gradients and BatchNorm's backward statistics)")
    lines += ["", f"Parameters: {plan['parameter_bytes'] / 1e6:.1f} MB per chip; {reduced}.", "",
              f"Chip figures: {plan['chip']['source']}.", ""]
    return "\n".join(lines)


def collective_lines(plan: dict) -> list[str]:
    """GPU nodes: the collectives' bytes within a node (NVLink) and between nodes (the
    network), and the figures each is timed at; nothing for a TPU slice or one CPU."""
    chip = plan["chip"]
    if not chip.get("network_bandwidth"):
        return []
    sums = [p["collective_summary"] for p in plan["programs"]]
    intra = sum(s["intra_node_wire_bytes"] for s in sums)
    inter = sum(s["inter_node_wire_bytes"] for s in sums)
    across = sum(s["inter_node_count"] for s in sums)
    count = sum(s["count"] for s in sums)
    return ["", f"Collectives per GPU per step: {count}, {intra / 1e6:.1f} MB sent within a node "
            f"(NVLink, {chip['ici_bandwidth'] / 1e9:.0f} GB/s each way) and {across} of them "
            f"across nodes, {inter / 1e6:.1f} MB sent between nodes (network, "
            f"{chip['network_bandwidth'] / 1e9:.0f} GB/s each way per GPU), for a "
            f"hierarchical algorithm over nodes of {chip['devices_per_node']} "
            "(`hlo.Collective.node_split`)."]


def max_batch_lines(search) -> list[str]:
    """plan.md's section on `--max-batch`'s search (`planner.find_max_batch`), if it ran."""
    if not search:
        return []
    lines = ["## The largest per-chip batch that fits", "",
             "| try | per-chip batch | needed GiB | fits | compile s |", "|---|---|---|---|---|"]
    for i, t in enumerate(search["tries"], 1):
        need = "refused" if t["needed_bytes"] is None else _gib(t["needed_bytes"])
        lines.append(f"| {i} | {t['per_chip_batch']} | {need} | "
                     f"{'yes' if t['fits'] else 'no'} | {t['compile_seconds']:.0f} |")
    lines += ["", f"Largest found: {search['max_per_chip_batch']} per chip (in multiples of "
              f"{search['step']})" + (f"; {search['stopped']}" if search.get("stopped") else "")
              + (f"; at least that: the search stopped with the bracket {open_bracket(search)} "
                 "open (its tries resume it: `find_max_batch(earlier_tries=...)`)"
                 if search.get("complete") is False else "")
              + (f". Command: `{search['command']}`" if search.get("command") else "") + ".",
              ""]
    return lines


def open_bracket(search: dict) -> str:
    """"[lo, hi)" of a search that stopped before its bracket closed ("[lo, ?)" where no
    larger batch was compiled)."""
    lo, hi = search["bracket"]
    return f"[{lo}, {'?' if hi is None else hi})"


def summary(plan: dict) -> str:
    """The plan in three lines."""
    m, est = plan["memory"], plan["estimate"]
    lines = [f"Memory per chip: {memory_words(m)}: "
             f"{'fits' if m['fits'] else 'does not fit'}."]
    if est is not None:
        flops = sum(p["flops"] for p in plan["programs"])
        sent = sum(p["collective_summary"]["wire_bytes"] for p in plan["programs"])
        lines.append(f"Per chip per step: {flops / 1e12:.2f} TFLOP, {sent / 1e6:.1f} MB sent "
                     f"by collectives; compiled in {plan['compile_seconds']:.0f} s.")
        lines.append(f"{ESTIMATE_HEADING}: {estimate_words(est)}.")
    if plan.get("measured"):
        lines.append(f"Measured here: {two_figures(plan['measured']['step_seconds'] * 1e3)} "
                     f"ms/step ({plan['measured']['ratio_to_estimate']:.2f}x the estimate).")
    return "\n".join(lines)
