"""SIGTERM (a scheduler's preemption notice) as a flag the training loop polls."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint of the step it had reached."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"Stopped by SIGTERM at step {step}; the checkpoint of step {step} is "
                         f"saved in {directory!r}. Rerun the same command to resume.")
        self.step = step


class PreemptionWatch:
    """Turns SIGTERM (a scheduler's preemption notice) into a flag the training loop polls.

    Installs its handler on entering (main thread only) and restores the previous one on
    leaving. With several processes, `requested` is true on every process as soon as one
    of them got the signal, so that all save the same step together.
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self._flag = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
        return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))
