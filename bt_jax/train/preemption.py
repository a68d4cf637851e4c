"""A scheduler's preemption notice (SIGTERM) as the step where every process saves and stops."""
from __future__ import annotations

import signal
import threading
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint of the step it had reached."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"Stopped by SIGTERM at step {step}; the checkpoint of step {step} is "
                         f"saved in {directory!r}. Rerun the same command to resume.")
        self.step = step


class PreemptionWatch:
    """Turns a scheduler's preemption notice (SIGTERM) into a step at which every process
    saves and stops; the training loop asks `requested(step)` after each step.

    One process: a SIGTERM handler, installed on entering (main thread only) and restored
    on leaving, sets a flag that `requested` returns.

    Several processes (jax.distributed initialised): JAX's coordination service owns
    SIGTERM. jax.distributed.initialize starts its preemption notifier, which hears the
    signal on whichever process gets it and tells the others; `requested(step)` is
    multihost_utils.reached_preemption_sync_point(step), a local check with no
    communication until a notice arrives, then true on every process at the same step
    (one past the furthest step any process had reached). So the loop neither synchronises
    the hosts nor reads from the devices to poll it, and asynchronous dispatch runs ahead.
    Where the preemption service is off (jax_enable_preemption_service=False), it falls
    back to this process's own SIGTERM flag, gathered from every process after each step.
    """

    def __init__(self, coordinated: Optional[bool] = None):
        """coordinated: None decides (the coordination service's notice with several
        processes and the preemption service on); False keeps the per-step gather of the
        SIGTERM flags (experiments/bench_preemption.py measures both)."""
        self._flag = False
        self._previous = None
        self._choice = coordinated
        self._coordinated = False

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def __enter__(self):
        self._coordinated = (jax.process_count() > 1 and _preemption_service_on()
                             if self._choice is None else self._choice)
        if not self._coordinated and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def requested(self, step: int) -> bool:
        """Whether to save `step` and stop. Call it after every step, on every process,
        with the same step numbers (the coordination service's contract)."""
        if self._coordinated:
            return multihost_utils.reached_preemption_sync_point(step)
        if jax.process_count() == 1:
            return self._flag
        return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))


def _preemption_service_on() -> bool:
    """Whether JAX's preemption service runs: on by default with jax.distributed
    (`jax_enable_preemption_service`)."""
    return bool(jax.config.jax_enable_preemption_service)
