"""What a run reports while it trains: metrics.jsonl, TensorBoard events and the progress
line, the kNN monitor's rows and the collapse diagnostics."""
from __future__ import annotations

import json
import time
from typing import Optional

from bt_jax.io import run_dir, storage
from bt_jax import diagnostics, event_writer, losses


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites the JSON-lines file at path (atomically) without its rows of steps after
    `step` and without unreadable lines (a launch killed mid-write); returns how many were
    dropped. A missing file is left missing."""
    try:
        lines = storage.read_text(path).splitlines()
    except FileNotFoundError:
        return 0
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        run_dir.atomic_write(path, "".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


class MetricsLog:
    """metrics.jsonl (one JSON line per logging step), TensorBoard events, a progress line;
    all three from process 0 only (write_files).

    pairs/s is measured over the interval since the previous line (the first interval
    leaves out the compiles the loop reports with `leave_out`); the ETA extrapolates that
    rate.
    """

    def __init__(self, workdir: str, total_steps: int, global_batch: int, *,
                 steps_per_epoch: int = 0, write_files: bool = True,
                 eval_split: str = "test",
                 progress: Optional[tuple] = None):
        self.workdir = workdir
        self.path = run_dir.path(workdir, run_dir.METRICS) if write_files else None
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.steps_per_epoch = steps_per_epoch
        self.write_files = write_files
        self.eval_split = eval_split
        # the objective's (key, label, format) on the progress line; default Barlow Twins'
        self.progress = losses.OBJECTIVES["barlow_twins"].progress if progress is None \
            else progress
        self.writer = event_writer.create(workdir) if write_files else None
        self._last = (time.perf_counter(), 0)

    def start(self, step: int):
        """Starts the clock at `step`; a run resumed from the checkpoint of `step` first
        drops the rows its earlier launch logged after that step (they are logged again),
        so metrics.jsonl and diagnostics.jsonl keep one row per step (and TensorBoard,
        told of the restart, drops its points after `step`)."""
        if self.write_files and step:
            for name in (run_dir.METRICS, run_dir.DIAGNOSTICS):
                drop_rows_after(run_dir.path(self.workdir, name), step)
            if self.writer is not None:
                self.writer.restart_at(step)
        self._last = (time.perf_counter(), step)

    def leave_out(self, seconds: float) -> None:
        """Leaves `seconds` already spent (a compile) out of the next line's pairs/s."""
        t0, s0 = self._last
        self._last = (t0 + seconds, s0)

    def write(self, step: int, scalars: dict) -> dict:
        now = time.perf_counter()
        t0, s0 = self._last
        self._last = (now, step)
        seconds_per_step = (now - t0) / max(step - s0, 1)
        row = {"step": step, **{k: float(v) for k, v in scalars.items()},
               "pairs_per_s": self.global_batch / max(seconds_per_step, 1e-9),
               "step_time_s": seconds_per_step}
        if self.steps_per_epoch:
            row["epoch"] = step / self.steps_per_epoch
        if self.path is not None:
            storage.append_text(self.path, json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, row)
        if not self.write_files:
            return row   # processes other than 0 stay quiet
        eta = _format_eta((self.total_steps - step) * seconds_per_step)
        lr = f" | lr {row['learning_rate']:.3g}" if "learning_rate" in row else ""
        epoch = f" (epoch {row['epoch']:.2f})" if "epoch" in row else ""
        probe = f" | probe acc {row['probe_top1']:.3f}" if "probe_top1" in row else ""
        terms = " ".join(f"{label} {row[key]:{fmt}}" for key, label, fmt in self.progress
                         if key in row)
        terms = f" | {terms}" if terms else ""
        print(f"step {step:>6}/{self.total_steps}{epoch} | loss {row['loss']:.4f}{terms}{lr}"
              f"{probe} | {row['pairs_per_s']:,.0f} pairs/s | ETA {eta}", flush=True)
        return row

    def write_monitor(self, step: int, knn: dict) -> dict:
        """The kNN monitor's {"knn_top1", "knn_top5", "seconds"} -> a metrics.jsonl row
        {"step", "epoch", "monitor_knn_top1", "monitor_knn_top5", "monitor_seconds"},
        TensorBoard scalars and a progress line. The pairs/s of the next training line
        leave the monitor's time out."""
        row = {"step": step, **{f"monitor_{k}": float(v) for k, v in knn.items()}}
        if self.steps_per_epoch:
            row["epoch"] = step / self.steps_per_epoch
        self._last = (time.perf_counter(), step)
        if not self.write_files:
            return row
        storage.append_text(self.path, json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, {k: v for k, v in row.items() if k != "step"})
        epoch = f" (epoch {row['epoch']:.2f})" if "epoch" in row else ""
        print(f"step {step:>6}/{self.total_steps}{epoch} | kNN monitor: top-1 "
              f"{100 * row['monitor_knn_top1']:.2f}% on the {self.eval_split} split "
              f"({row['monitor_seconds']:.1f} s)", flush=True)
        return row

    def write_diagnostics(self, step: int, diagnosis: dict) -> Optional[str]:
        """Collapse diagnostics of `make_diagnose_fn` -> diagnostics.jsonl, TensorBoard
        scalars and the C heatmap image; prints and returns a warning if collapsing."""
        row = {"step": step}
        warnings = []
        for name in ("embedding", "features"):
            row.update({f"{name}_{k}": v for k, v in
                        diagnostics.scalars(diagnosis[name]).items()})
            verdict = diagnostics.collapse_verdict(diagnosis[name])
            if verdict:
                warnings.append(f"{name}s: {verdict}")
        if not self.write_files:
            return None
        storage.append_text(run_dir.path(self.workdir, run_dir.DIAGNOSTICS),
                            json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, {f"diagnostics/{k}": v for k, v in row.items()
                                             if k != "step"})
            self.writer.write_images(step, {"cross_correlation": diagnostics.correlation_heatmap(
                diagnosis["c_block"])[None]})
        if warnings:
            message = f"warning: step {step}: collapse? " + "; ".join(warnings)
            print(message, flush=True)
            return message
        return None

    def close(self):
        if self.writer is not None:
            self.writer.close()   # flushes
