"""A profile of chosen training steps (config.profile), traced with jax.profiler into the
workdir, where TensorBoard's profile plugin reads it (`tensorboard --logdir WORKDIR`, the
Profile tab; `pip install tensorboard-plugin-profile`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

import jax

from bt_jax.io import run_dir, storage


class StepTrace:
    """Traces steps start .. start + num - 1 of the training loop into
    WORKDIR/plugins/profile/<time>/ (jax.profiler's layout under a TensorBoard log dir).

    The loop calls `begin(step)` before and `end(step, state)` after each step, and
    `close()` on every way out. Only process 0 traces (`enabled`); num 0 traces nothing,
    and a run resumed past `start` traces nothing. The last traced step is waited for
    (`jax.block_until_ready`) before the trace stops, so it holds that step's device work.
    """

    def __init__(self, workdir: str, start: int, num: int, enabled: bool = True):
        self.logdir = run_dir.profile_logdir(workdir)
        self.start, self.last = start, start + num - 1
        self.enabled = enabled and num > 0
        self.tracing = False
        self._local = self.logdir

    def begin(self, step: int) -> None:
        if self.enabled and step == self.start:
            print(f"Profiling steps {self.start}-{self.last} into "
                  f"{storage.join(self.logdir, run_dir.PROFILES)} (TensorBoard's Profile "
                  "tab).", flush=True)
            # jax.profiler writes through its own file systems: on an object store, into a
            # local folder first, copied over when the trace stops.
            self._local = (tempfile.mkdtemp(prefix="bt_jax_profile_")
                           if storage.is_remote(self.logdir) else self.logdir)
            os.makedirs(self._local, exist_ok=True)
            jax.profiler.start_trace(self._local)
            self.tracing = True

    def annotation(self, step: int):
        """The step's annotation for the trace viewer's step view (a no-op context when
        not tracing)."""
        return jax.profiler.StepTraceAnnotation("train", step_num=step) if self.tracing \
            else contextlib.nullcontext()

    def end(self, step: int, state: Any) -> None:
        if self.tracing and step == self.last:
            jax.block_until_ready(state)
            self.close()
            print(f"Profile of steps {self.start}-{self.last} written.", flush=True)

    def close(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
            if self._local != self.logdir:
                storage.copy_tree(self._local, self.logdir)
                shutil.rmtree(self._local, ignore_errors=True)

