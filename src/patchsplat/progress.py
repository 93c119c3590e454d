"""Progress for long work: a rich bar on a terminal, a periodic line with an ETA everywhere else.

Under ``dvc repro`` or ``patchsplat run`` a stage's output goes to a pipe (DVC's log, Prefect's),
where a progress bar shows nothing until the stage ends. :class:`ProgressLine` prints one line
every ``interval`` seconds instead (``[p0] step 400/2400 (17%), loss 0.041, 23,410 Gaussians,
3.1 steps/s, ETA 10 min 45 s``), flushed at once so it reaches the log while the work runs.

    line = ProgressLine("step", total=2400, log=print, start=resumed_step)
    line.update(done, loss="0.041", gaussians="23,410 Gaussians")   # prints when due
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

# Often enough that a log shows the work is alive; rarely enough that a 30-minute run prints ~100 lines.
DEFAULT_INTERVAL_SECONDS = 15.0


def on_terminal() -> bool:
    """Whether standard output is a terminal (rich bars) rather than a pipe or file (periodic lines)."""
    return sys.stdout.isatty()


def format_duration(seconds: float) -> str:
    """``45 s``, ``4 min 18 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLine:
    """Prints ``what done/total (pct), <fields>, rate, ETA`` at most once per ``interval`` seconds.

    The rate counts only the work done since this object was made (``start`` is where a resumed
    run began), so a resumed run's ETA is not inflated by steps it did not do.
    """

    def __init__(self, what: str, total: int, log: Callable[[str], None], *, start: int = 0, unit: str = "steps",
                 interval: float = DEFAULT_INTERVAL_SECONDS, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.log, self.unit = what, total, log, unit
        self.start, self.interval = start, interval
        self.enabled = (not on_terminal()) if enabled is None else enabled
        self.clock = clock
        self.started = self.last = clock()

    def rate(self, done: int) -> float | None:
        elapsed = self.clock() - self.started
        return (done - self.start) / elapsed if elapsed > 0 and done > self.start else None

    def line(self, done: int, **fields: str) -> str:
        parts = [f"{self.what} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%)", *fields.values()]
        rate = self.rate(done)
        if rate:
            parts.append(f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s per {self.unit.rstrip('s')}")
            parts.append(f"ETA {format_duration((self.total - done) / rate)}")
        return ", ".join(part for part in parts if part)

    def update(self, done: int, *, force: bool = False, **fields: str) -> None:
        """Print the line if ``interval`` seconds passed since the last one (or ``force``)."""
        if not self.enabled:
            return
        now = self.clock()
        if force or now - self.last >= self.interval:
            self.last = now
            self.log(self.line(done, **fields))
