"""A one-line progress bar for long commands (silent when not on a terminal)."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``[#####.....] done/total  text``, redrawn in place on a terminal.

    Nothing is written when `stream` is not a terminal (logs and pipes stay
    clean); `force` writes anyway.
    """

    def __init__(
        self, total: int, stream: TextIO | None = None, width: int = 30, *, force: bool = False
    ) -> None:
        self.total = max(int(total), 1)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.active = force or bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, text: str = "") -> None:
        """Show `done` of `total` steps and a short status `text`."""
        if not self.active:
            return
        filled = self.width * min(done, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total}  {text}")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.active:
            self.stream.write("\n")
            self.stream.flush()
