"""The paper's ablations (Zbontar et al. 2021, arXiv 2103.03230: Sec. 4, Tables 5 and 6,
Figs. 2 to 5) as config sweeps.

  python experiments/ablations.py --sweep seed --scale small --references   # the noise floor first
  python experiments/ablations.py --sweep loss --scale small
  python experiments/ablations.py --sweep all --scale paper --plan v5e:4x4   # the pod budget

Every run is the ordinary trainer (`bt_jax.train.train_and_evaluate`) on a recipe plus
config overrides, in its own workdir ROOT/SCALE/RUN: shared between sweeps, resumable, and
skipped once finished (its results.json, or RESULTS/runs.json, the ledger committed beside
the tables). Rows named in the scale's `repeated` list run with three seeds and report
their mean. Each sweep writes NAME.csv, NAME.md and NAME.png into RESULTS (SCALE/ below it
for scales other than small), and its table between markers of the scale's docs page.
The noise floor, the verdict per probe and the row's verdict over both probes are
ablation_report's (noise_threshold, agreement, two_probe_verdict); the summary of every
CSV, with each row's size against the paper's, is ablation_summary's (written into the
docs page and, at the small scale, README.md); the paper's numbers and claims are
ablation_paper's; the budget on a TPU slice is ablation_budget's.

Scales:
  small  configs/fashion_mnist_quick.py as it is: one epoch of Fashion-MNIST (234 steps at
         batch 256), probes fit on the 60,000 training images; about 10 to 12 min a run on
         2 CPU cores. Its baseline beats raw pixels' linear probe by more than 2 points.
  tiny   configs/fashion_mnist_narrow.py cut to 30,720 pairs per run (120 steps at batch 256),
         probes fit on 10,000 labelled training images; about 2 min 45 s a run on 2 CPU
         cores, for quick checks: its baseline learns less than raw pixels hold.
  paper  configs/imagenet.py at 300 epochs, the paper's ablation length, with the paper's
         SGD linear probe. --print-commands prints one `python -m bt_jax.main` command per
         run for a cluster's scheduler; --report-only then builds the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# What the tests and other scripts use from the sweep's parts, under one name.
from ablation_report import (CSV_FIELDS, agreement, annotate, is_borderline,  # noqa: E402,F401
                             markdown_table, mean_row, noise_floor, noise_text, noise_threshold,
                             replace_block,
                             paper_expectation, plot_sweep, two_probe_verdict, write_csv)
from ablation_paper import PAPER_NOTES  # noqa: E402,F401
from ablation_sweeps import (SCALES, SWEEPS, Run, Scale, recipe,  # noqa: E402,F401
                             repeat_runs, sweep_runs)
import ablation_summary  # noqa: E402
from ablation_ledger import LEDGER, ledger_entry, read_ledger, write_ledger  # noqa: E402,F401
from bt_jax.io.run_dir import read_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_set(items: list[str]) -> dict:
    """["a.b=1", "c=(1, 2)"] -> {"a.b": 1, "c": (1, 2)} (values read as Python literals,
    else kept as strings)."""
    import ast  # pylint: disable=import-outside-toplevel
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --set takes FIELD=VALUE (e.g. --set num_steps=5); got "
                             f"{item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def override_args(overrides: dict) -> tuple[str, ...]:
    """("--config.FIELD=VALUE", ...) of dotted fields and values, as a command line writes
    them: tuples (and lists, as a ledger stores them) as Python tuples, the rest as text."""
    args = []
    for key, value in overrides.items():
        if isinstance(value, (tuple, list)):
            text = f"({', '.join(map(repr, value))}{',' if len(value) == 1 else ''})"
        else:
            text = str(value)
        args.append(f"--config.{key}={text}")
    return tuple(args)


def run_config(recipe_path: str, overrides: dict):
    """The recipe with the overrides, read by bt_jax's own loader and override parser (as
    `python -m bt_jax.main` would read `train_command`); a field that does not exist, or
    one that moved, stops the sweep with one line."""
    from bt_jax import cli  # pylint: disable=import-outside-toplevel
    from bt_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
    try:
        return cli.load_recipe(os.path.join(ROOT, recipe_path), override_args(overrides))
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


def run_overrides(scale: Scale, run: Run, extra: dict) -> dict:
    """Scale, then run, then --set overrides (later ones win)."""
    return {**scale.overrides, **run.overrides, **extra}


def train_command(scale: Scale, run: Run, extra: dict, workdir: str) -> str:
    """The `python -m bt_jax.main` command that trains and evaluates one run."""
    args = ["python", "-m", "bt_jax.main",
            f"--config={scale.recipe}", f"--workdir={workdir}"]
    args += override_args(run_overrides(scale, run, extra))
    return " ".join(shlex.quote(a) for a in args)


def run_status(workdir: str, overrides: dict) -> str:
    """"done" | "failed" | "todo". A workdir made with other overrides is an error: the
    sweep would otherwise report another experiment's numbers."""
    record = read_json(os.path.join(workdir, "ablation.json"))
    if record is not None and record.get("overrides") != json.loads(json.dumps(overrides)):
        raise SystemExit(
            f"error: {workdir!r} holds a run with other overrides ({record.get('overrides')}); "
            "delete it or pass another --root.")
    results = read_json(os.path.join(workdir, "results.json")) or {}
    if "linear_top1" in results and "knn_top1" in results:
        return "done"
    return "failed" if record is not None and record.get("status") == "failed" else "todo"


def train_run(scale: Scale, run: Run, extra: dict, workdir: str) -> dict:
    """Trains and evaluates one run in this process; a run that fails (e.g. diverges) is
    recorded as failed in workdir/ablation.json and the sweep goes on."""
    from bt_jax import train  # pylint: disable=import-outside-toplevel
    overrides = run_overrides(scale, run, extra)
    config = run_config(scale.recipe, overrides)
    os.makedirs(workdir, exist_ok=True)
    record_path = os.path.join(workdir, "ablation.json")
    record = read_json(record_path) or {"overrides": json.loads(json.dumps(overrides)),
                                         "seconds": 0.0}
    print(f"\n=== {run.name}: {run.setting}\n    {train_command(scale, run, extra, workdir)}",
          flush=True)
    start = time.perf_counter()
    try:
        train.train_and_evaluate(config, workdir)
        record.update(status="done", error="")
    except (FloatingPointError, ValueError, RuntimeError) as e:   # diverged, or cannot run
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        print(f"run {run.name} failed: {record['error']}", flush=True)
    record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - start
    with open(record_path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(record_path + ".tmp", record_path)
    return record


def collect_row(sweep: str, run: Run, workdir: str) -> dict:
    """One CSV row from a run's workdir (accuracies in percent; empty where missing)."""
    results = read_json(os.path.join(workdir, "results.json")) or {}
    record = read_json(os.path.join(workdir, "ablation.json")) or {}
    final = {}
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        final = lines[-1] if lines else {}
    except (OSError, ValueError):
        pass

    def pct(key):
        return round(100 * results[key], 2) if key in results else ""

    status = "done" if "linear_top1" in results else record.get("status", "todo")
    return {"sweep": sweep, "run": run.name, "setting": run.setting,
            "x": "" if run.x is None else run.x, "status": status,
            "linear_top1": pct("linear_top1"), "linear_top5": pct("linear_top5"),
            "knn_top1": pct("knn_top1"), "knn_top5": pct("knn_top5"),
            "online_top1": pct("online_linear_top1"),
            "effective_rank": round(results["diagnostics"]["test_features_effective_rank"], 2)
            if "test_features_effective_rank" in results.get("diagnostics", {}) else "",
            "final_loss": round(final["loss"], 4) if "loss" in final else "",
            "steps": final.get("step", ""),
            "seconds": round(record["seconds"]) if "seconds" in record else "",
            "paper_top1": "" if run.paper is None else run.paper}


REFERENCES = (("random_init", "reference: same encoder, random init (no training)"),
              ("pixels", "reference: raw pixels"))


def reference_rows(sweep: str, workdir: str, ledger: Optional[dict] = None) -> list[dict]:
    """Rows for the random-init encoder and raw pixels, probed the same way, from the
    baseline's results.json (present once `--references` evaluated them), else from the
    ledger's baseline entry. Found in results.json, they are recorded in the ledger."""
    results = read_json(os.path.join(workdir, "results.json")) or {}
    found = results.get("baselines", {})
    entry = (ledger or {}).get("baseline")
    if found and entry is not None:
        entry["references"] = found
    elif not found and entry is not None:
        found = entry.get("references", {})
    rows = []
    for key, setting in REFERENCES:
        r = found.get(key)
        if r:
            rows.append({**{f: "" for f in CSV_FIELDS}, "sweep": sweep, "run": f"ref_{key}",
                         "setting": setting, "status": "reference",
                         "linear_top1": round(100 * r["linear_top1"], 2),
                         "linear_top5": round(100 * r["linear_top5"], 2),
                         "knn_top1": round(100 * r["knn_top1"], 2),
                         "knn_top5": round(100 * r["knn_top5"], 2)})
    return rows


def evaluate_references(scale: Scale, extra: dict, workdir: str) -> None:
    """Probes the random-init encoder and raw pixels beside the finished baseline run
    (`python -m bt_jax.evaluate` with eval.baselines=True); results.json gains
    "baselines"."""
    from bt_jax import evaluate  # pylint: disable=import-outside-toplevel
    config = run_config(scale.recipe, {**run_overrides(scale, Run("baseline", "", {}), extra),
                                       "eval.baselines": True})
    evaluate.evaluate_workdir(workdir, config)


# A run whose workdir holds no result is taken from the ledger (ablation_ledger) when its
# overrides there are the same; its workdir wins otherwise.
_RUN_FIELDS = ("sweep", "setting", "x", "paper_top1")   # the sweep's, not the run's


def run_row(sweep: str, run: Run, workdir: str, overrides: dict, ledger: dict) -> dict:
    """The run's row: from its workdir when that holds a result (the ledger is updated),
    else from the ledger when it recorded the same overrides, else "todo"."""
    row = collect_row(sweep, run, workdir)
    if row["status"] in ("done", "failed"):
        kept = {k: v for k, v in row.items() if k not in _RUN_FIELDS}
        entry = ledger.setdefault(run.name, {})
        entry.update(overrides=json.loads(json.dumps(overrides)), row=kept)
        return row
    entry = ledger_entry(ledger, run.name, overrides)
    if entry is None:
        return row
    return {**row, **{k: v for k, v in entry["row"].items() if k in CSV_FIELDS},
            "run": run.name}


def report(sweep: str, runs: list[Run], scale_name: str, root: str, results_dir: str,
           command: str, extra: Optional[dict] = None) -> tuple[list[dict], Optional[dict]]:
    """Writes NAME.csv, NAME.md and NAME.png for one sweep, and records its runs in the
    ledger (runs.json); returns the annotated rows and the scale's noise floor (from its
    seed sweep's runs). extra: the --set overrides every run was trained with."""
    scale = SCALES[scale_name]
    scale_root = os.path.join(root, scale_name)
    ledger = read_ledger(results_dir)

    def row(sweep_name: str, run: Run) -> dict:   # the mean over the row's runs (its seeds)
        return mean_row([run_row(sweep_name, dataclasses.replace(r, x=run.x, paper=run.paper),
                                 os.path.join(scale_root, r.name),
                                 run_overrides(scale, r, extra or {}), ledger)
                         for r in repeat_runs(run)])
    floor = noise_floor([row("seed", r) for r in sweep_runs("seed", scale)])
    rows = annotate([row(sweep, r) for r in runs], runs, floor)
    rows += reference_rows(sweep, os.path.join(scale_root, "baseline"), ledger)
    write_ledger(ledger, results_dir)
    stem = os.path.join(results_dir, sweep)
    write_csv(rows, stem + ".csv")
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(sweep, rows, scale_name=scale_name, command=command,
                               floor=floor))
    plot_sweep(sweep, rows, stem + ".png", floor)
    return rows, floor


# The page holding each scale's tables (between <!-- table SWEEP --> markers).
DOCS_PAGES = {"small": "ablations.md", "tiny": "ablations_tiny.md"}


def plan_sweeps(sweeps: tuple, args, scale: Scale, extra: dict, results_dir: str) -> int:
    """--plan: the budget of every run of `sweeps` on one TPU slice (ablation_budget)."""
    import ablation_budget  # pylint: disable=import-outside-toplevel
    from bt_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
    from bt_jax.plan import chips  # pylint: disable=import-outside-toplevel
    try:
        chips.parse_topology(args.plan)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    entries = [(sweep, one.name, run.setting,
                run_config(scale.recipe, run_overrides(scale, one, extra)))
               for sweep in sweeps for run in sweep_runs(sweep, scale)
               for one in repeat_runs(run)]
    rows = ablation_budget.plan_budget(
        entries, args.plan, os.path.join(results_dir,
                                         f"budget_cache_{args.plan.replace(':', '_')}.json"),
        max_compiles=args.plan_max_compiles)
    command = (f"python experiments/ablations.py --sweep {args.sweep} --scale {args.scale} "
               f"--plan {args.plan}" + "".join(f" --set {shlex.quote(s)}" for s in args.set))
    table = ablation_budget.write_budget(rows, args.plan, results_dir, command, args.docs)
    print("\n" + table, flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", required=True, help=f"one of {SWEEPS}, or 'all'")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "ablations"),
                        help="workdirs go to ROOT/SCALE/RUN")
    parser.add_argument("--results", default=os.path.join(ROOT, "experiments", "results"),
                        help="where NAME.csv, NAME.md and NAME.png go (other scales than "
                             "small: into its SCALE/ sub-directory)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config override for every run (repeatable)")
    parser.add_argument("--run", action="append", default=[],
                        help="only these runs of the sweep (repeatable; e.g. one per job)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="train runs recorded as failed again")
    parser.add_argument("--references", action="store_true",
                        help="also probe a random-init encoder and raw pixels beside the "
                             "baseline (once; their rows join every table)")
    parser.add_argument("--plan", metavar="TOPOLOGY", default="",
                        help="train nothing: compile every run for this TPU slice (e.g. "
                             "v5e:4x4) with bt_jax.plan and write its memory and estimated "
                             "chip-hours (budget_TOPOLOGY.csv/.md, and into --docs)")
    parser.add_argument("--plan-max-compiles", type=int, default=None, metavar="N",
                        help="--plan: compile at most N new programs in this call (the "
                             "table marks the rest 'not compiled'; rerun to go on)")
    parser.add_argument("--docs", default="",
                        help="the page whose tables (between <!-- table SWEEP --> markers) "
                             "and budget (--plan) follow the results (default: the scale's "
                             "page in docs/ where --results is the default, else none)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print each run's `python -m bt_jax.main` command; train nothing")
    mode.add_argument("--report-only", action="store_true",
                      help="train nothing; build the tables from the workdirs")
    args = parser.parse_args(argv)
    if not args.docs and args.results == parser.get_default("results"):
        args.docs = os.path.join(ROOT, "docs", DOCS_PAGES.get(args.scale, "ablations.md"))

    scale = SCALES[args.scale]
    results_dir = (args.results if args.scale == "small"
                   else os.path.join(args.results, args.scale))
    extra = parse_set(args.set)
    sweeps = SWEEPS if args.sweep == "all" else tuple(args.sweep.split(","))

    def command(sweep: str) -> str:   # what reproduces one sweep's table
        return " ".join(["python experiments/ablations.py", f"--sweep {sweep}",
                         f"--scale {args.scale}"] + [f"--set {shlex.quote(s)}" for s in args.set]
                        + (["--references"] if args.references else []))

    if args.plan:
        return plan_sweeps(sweeps, args, scale, extra, results_dir)
    for sweep in sweeps:
        ledger = read_ledger(results_dir)
        runs = sweep_runs(sweep, scale)
        names = [r.name for r in runs]
        unknown = [n for n in args.run if n not in names]
        if unknown and len(sweeps) == 1:
            raise SystemExit(f"error: sweep {sweep!r} has no run {unknown}; its runs: {names}.")
        selected = [one for r in runs if not args.run or r.name in args.run
                    for one in repeat_runs(r)]
        for run in selected:
            workdir = os.path.join(args.root, args.scale, run.name)
            if args.print_commands:
                print(train_command(scale, run, extra, os.path.relpath(workdir)))
                continue
            overrides = run_overrides(scale, run, extra)
            status, where = run_status(workdir, overrides), ""
            recorded = ledger_entry(ledger, run.name, overrides)
            if status == "todo" and recorded:
                status, where = recorded["row"]["status"], f" (recorded in {LEDGER})"
            if args.report_only or status == "done" or (status == "failed"
                                                        and not args.retry_failed):
                print(f"{sweep}/{run.name}: {status}{where}, skipped", flush=True)
                continue
            train_run(scale, run, extra, workdir)
            run_row(sweep, run, workdir, overrides, ledger)   # recorded at once: a later
            write_ledger(ledger, results_dir)                  # run may be cut short
        if args.print_commands:
            continue
        base_dir = os.path.join(args.root, args.scale, "baseline")
        if (args.references and not args.report_only
                and run_status(base_dir, run_overrides(scale, Run("baseline", "", {}),
                                                       extra)) == "done"
                and not reference_rows(sweep, base_dir, read_ledger(results_dir))):
            evaluate_references(scale, extra, base_dir)
        rows, floor = report(sweep, runs, args.scale, args.root, results_dir, command(sweep),
                             extra)
        if args.docs and args.scale in DOCS_PAGES and not extra:   # the page's tables
            replace_block(args.docs, f"table {sweep}", markdown_table(
                sweep, rows, scale_name=args.scale, command=command(sweep), floor=floor,
                compact=True), append=False)
        print("\n" + markdown_table(sweep, rows, scale_name=args.scale, command=command(sweep),
                                    floor=floor), flush=True)
    if not args.print_commands and args.docs and args.scale in DOCS_PAGES and not extra:
        default_results = args.results == parser.get_default("results")
        write_summaries(args.scale, results_dir, args.docs,
                        os.path.join(ROOT, "README.md") if default_results else "")
    return 0


SUMMARY_COMMAND = "python experiments/ablations.py --sweep all --report-only --references"


def write_summaries(scale_name: str, results_dir: str, docs: str, readme: str) -> None:
    """The summary of every sweep CSV in results_dir (ablation_summary), in full into the
    docs page and compact into `readme` (the small scale's only; "": none), between their
    <!-- ablation summary --> markers where the page has them."""
    groups = ablation_summary.categorise(ablation_summary.read_scale_rows(results_dir),
                                         scale_name)
    command = SUMMARY_COMMAND + ("" if scale_name == "small" else f" --scale {scale_name}")
    replace_block(docs, "ablation summary", ablation_summary.full_summary(groups, command),
                  append=False)
    if scale_name == "small" and readme:
        replace_block(readme, "ablation summary", ablation_summary.compact_summary(groups),
                      append=False)


if __name__ == "__main__":
    sys.exit(main())
