"""One progress display for every long wait (a training stage, an evaluation, a data build): a rich bar with the
rate and an ETA on a terminal; plain lines (``title: 120/250 (48%) loss 2.31, 1m10s elapsed, ETA 1m15s``) every
``every`` seconds (10) when the output is a file or a pipe (nohup, Slurm, ``| tee``), where a bar would only be written
when it ends."""

from __future__ import annotations

import sys
import time


def plain_output() -> bool:
    """Whether standard output is not a terminal (then bars are replaced by periodic lines); rich's own test, so
    ``FORCE_COLOR``/``TTY_COMPATIBLE`` settings count. Progress goes to standard output, with the log lines, so
    that a failing command's standard error is its one ``error:`` line."""
    from rich.console import Console

    return not Console().is_terminal


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ProgressLine:
    """``start()``, ``update(completed, info)`` any number of times, ``stop()``. ``unit`` names what is counted
    (``steps``, ``answers``); ``info`` is a short text shown beside the count (loss, reward)."""

    def __init__(self, title: str, total: int, unit: str = "steps", completed: int = 0, every: float = 10.0,
                 transient: bool = False) -> None:
        self.title, self.total, self.unit, self.every, self.transient = title, max(0, total), unit, every, transient
        self.completed, self.first, self.info = completed, completed, ""
        self.started = self.last_line = 0.0
        self.bar = self.task = None

    def start(self) -> ProgressLine:
        self.started = self.last_line = time.monotonic()
        if plain_output():
            print(f"{self.title}: {self.completed}/{self.total} {self.unit}", file=sys.stdout, flush=True)
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(f"{self.unit} ·"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=self.transient,
                            console=Console())
        self.task = self.bar.add_task(self.title, total=self.total, completed=self.completed, info="")
        self.bar.start()
        return self

    def eta(self) -> float | None:
        """Seconds left at the rate of this run so far (resumed steps excluded), ``None`` before the first."""
        done = self.completed - self.first
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * max(0, self.total - self.completed)

    def line(self) -> str:
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        eta = self.eta()
        return (f"{self.title}: {self.completed}/{self.total} {self.unit}{pct}{'  ' + self.info if self.info else ''}"
                f", {duration(time.monotonic() - self.started)} elapsed"
                + (f", ETA {duration(eta)}" if eta is not None and self.completed < self.total else ""))

    def update(self, completed: int | None = None, info: str | None = None, advance: int = 0) -> None:
        self.completed = (self.completed if completed is None else completed) + advance
        self.info = self.info if info is None else info
        if self.bar is not None:
            self.bar.update(self.task, completed=self.completed, info=self.info)
        elif time.monotonic() - self.last_line >= self.every and self.completed < self.total:  # stop() says done
            self.last_line = time.monotonic()
            print(self.line(), file=sys.stdout, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.completed, info=self.info)
            self.bar.stop()
            self.bar = None
        elif self.started:
            print(self.line() + " (done)" if self.completed >= self.total else self.line(), file=sys.stdout,
                  flush=True)
        self.started = 0.0

    def __enter__(self) -> ProgressLine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
