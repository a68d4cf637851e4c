"""Progress lines for the long, otherwise silent parts of a run: compiles, and the
evaluation's feature extraction and probes.

    ticker = Ticker("trained encoder: features", total=70_000, unit="images")
    for done in ...: ticker.update(done)      # prints at most every `every_s` seconds
    ticker.done("")                           # "... 70,000/70,000 images (12.3 s)"

    step = CompilesAhead("the train step", jax.jit(f))   # on its first call:
    step(state, batch)   # "compiling the train step ..." / "compiled the train step in N.N s"
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

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


def quiet(message: str) -> None:   # pylint: disable=unused-argument
    """A printer that prints nothing (the processes other than 0 of a multi-host run)."""


def compile_ahead(name: str, jitted: Any, *args, printer: Callable[[str], None] = say
                  ) -> float:
    """Compiles the jitted function for `args` (arrays or jax.ShapeDtypeStructs) with a
    line before and after; returns the seconds it took.

    `jitted.lower(*args).compile()`: the call with the same arguments' shapes and
    shardings then finds the program in JAX's compilation cache instead of compiling it
    again (tests/test_progress.py counts the compiles)."""
    printer(f"compiling {name} ...")
    start = time.perf_counter()
    jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    printer(f"compiled {name} in {seconds:.1f} s")
    return seconds


class CompilesAhead:
    """A jitted function that announces its compile: the first call compiles it for that
    call's arguments (`compile_ahead`, a line before and after), then every call runs it.

    name: what the lines call the program ("the train step"); jitted: the `jax.jit`
    function; printer: where the lines go. `seconds`: the compile's time, None before the
    first call.
    """

    def __init__(self, name: str, jitted: Any, printer: Callable[[str], None] = say):
        self.name, self.jitted, self.printer = name, jitted, printer
        self.seconds: Optional[float] = None

    def __call__(self, *args):
        if self.seconds is None:
            self.seconds = compile_ahead(self.name, self.jitted, *args, printer=self.printer)
        return self.jitted(*args)
