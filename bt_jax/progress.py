"""Progress lines for the long, otherwise silent parts of a run (the evaluation).

    ticker = Ticker("trained encoder: features", total=70_000, unit="images")
    for done in ...: ticker.update(done)      # prints at most every `every_s` seconds
    ticker.done("")                           # "... 70,000/70,000 images (12.3 s)"
"""
from __future__ import annotations

import time
from typing import Callable, Optional

PREFIX = "Evaluation | "


def say(message: str) -> None:
    """One progress line, flushed at once (a log file sees it while the run goes on)."""
    print(PREFIX + message, flush=True)


class Ticker:
    """A count towards `total`, printed at most every `every_s` seconds and once at the end.

    Args:
      label: what is counted, e.g. "trained encoder: features".
      total: the count at the end; unit: its unit ("images", "epochs").
      every_s: the least time between two lines (0: every update).
      printer: where lines go (default `say`).
    """

    def __init__(self, label: str, total: int, unit: str, *, every_s: float = 15.0,
                 printer: Optional[Callable[[str], None]] = None):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.printer = printer or say
        self.start = self._last = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self._last >= self.every_s and done < self.total:
            self._last = now
            eta = self.seconds / max(done, 1) * (self.total - done)
            self.printer(f"{self.label}: {done:,}/{self.total:,} {self.unit} "
                         f"({self.seconds:.0f} s, about {eta:.0f} s left)")

    def done(self, result: str = "") -> float:
        """Prints the closing line (with `result`, e.g. "top-1 87.3%"); returns seconds."""
        seconds = self.seconds
        self.printer(f"{self.label}{': ' + result if result else ''} "
                     f"({self.total:,} {self.unit}, {seconds:.1f} s)")
        return seconds
