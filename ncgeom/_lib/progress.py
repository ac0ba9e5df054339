"""Progress of long commands: a bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``[#####.....] done/total  text``, redrawn in place on a terminal.

    When `stream` is not a terminal nothing is written (logs and pipes stay
    clean), unless `log_every` is given: then one line
    ``[ 40%] 12 s  done/total  text`` is written at most every `log_every`
    seconds, and one at the end. `force` draws the bar anyway.

    Parameters
    ----------
    total : int
        Number of steps.
    stream : file, optional
        Where to write (default standard error).
    width : int
        Characters of the bar.
    force : bool
        Draw the bar even when `stream` is not a terminal.
    log_every : float, optional
        Seconds between log lines when `stream` is not a terminal.

    Examples
    --------
    >>> import io
    >>> log = io.StringIO()
    >>> progress = Progress(4, log, log_every=0.0)
    >>> progress.update(1, "loss 0.5")
    >>> log.getvalue().split()[:2], log.getvalue().split()[4:]
    (['[', '25%]'], ['1/4', 'loss', '0.5'])
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        width: int = 30,
        *,
        force: bool = False,
        log_every: float | None = None,
    ) -> None:
        self.total = max(int(total), 1)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.active = force or bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every = None if self.active else log_every
        self.started = time.perf_counter()
        self._logged_at: float | None = None
        self._logged_done: int | None = None
        self._last = (0, "")

    def update(self, done: int, text: str = "") -> None:
        """Show `done` of `total` steps and a short status `text`."""
        self._last = (done, text)
        if self.log_every is not None:
            now = time.perf_counter()
            if self._logged_at is None or now - self._logged_at >= self.log_every:
                self._log(done, text, now)
            return
        if not self.active:
            return
        filled = self.width * min(done, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total}  {text}")
        self.stream.flush()

    def _log(self, done: int, text: str, now: float) -> None:
        self._logged_at = now
        self._logged_done = done
        percent = 100 * min(done, self.total) // self.total
        elapsed = now - self.started
        self.stream.write(f"[{percent:3d}%] {elapsed:5.0f} s  {done}/{self.total}  {text}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line (on a terminal) or write the last log line."""
        if self.active:
            self.stream.write("\n")
            self.stream.flush()
        elif self.log_every is not None and self._last[0] != self._logged_done:
            self._log(*self._last, time.perf_counter())
