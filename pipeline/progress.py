"""A rich progress bar for long stages: items done, images/s and ETA, on stderr."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as _RichProgress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class Progress:
    """Context manager around one rich task; a no-op when disabled (tests, non-TTY logs)."""

    def __init__(self, description: str, total: int, enabled: bool = True) -> None:
        self.description, self.total, self.enabled = description, total, enabled
        self._bar: _RichProgress | None = None
        self._done, self._start = 0, time.perf_counter()

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._bar = _RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} img/s"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, rate=0.0)
        self._start = time.perf_counter()
        return self

    def advance(self, rows: int) -> None:
        self._done += rows
        if self._bar is not None:
            rate = self._done / max(time.perf_counter() - self._start, 1e-9)
            self._bar.update(self._task, advance=rows, rate=rate)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


class Laps:
    """Seconds between named points since `start` (a perf_counter reading): a set-up's split."""

    def __init__(self, start: float) -> None:
        self.seconds: dict[str, float] = {}
        self._last = start

    def lap(self, name: str) -> dict[str, float]:
        """Record the time since the last lap as `name`; returns every lap so far."""
        now = time.perf_counter()
        self.seconds[name], self._last = round(now - self._last, 3), now
        return dict(self.seconds)
