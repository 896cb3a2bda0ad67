"""A dependency-free progress bar: draws on a terminal, stays silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Progress over ``total`` steps with a free-form postfix (loss, images/s...).

    Parameters
    ----------
    total : number of steps, or None when unknown.
    label : text before the bar.
    unit : ``"B"`` shows bytes in MiB, anything else counts steps.
    enabled : None draws only when ``stream`` is a terminal.
    """

    def __init__(
        self,
        total: int | None,
        label: str = "",
        unit: str = "it",
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.unit = total, label, unit
        self.count = 0
        self.postfix = ""
        self.last_draw = 0.0

    def update(self, steps: int = 1, postfix: str | None = None) -> None:
        self.count += steps
        if postfix is not None:
            self.postfix = postfix
        now = time.monotonic()
        if self.enabled and (now - self.last_draw > 0.1 or self.count == self.total):
            self.last_draw = now
            self._draw()

    def _draw(self) -> None:
        def fmt(n):
            return f"{n / 2**20:.1f}MiB" if self.unit == "B" else str(n)

        if self.total:
            done = int(20 * self.count / self.total)
            bar = f"[{'#' * done}{'.' * (20 - done)}] {fmt(self.count)}/{fmt(self.total)}"
        else:
            bar = fmt(self.count)
        self.stream.write(f"\r{self.label} {bar} {self.postfix}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
