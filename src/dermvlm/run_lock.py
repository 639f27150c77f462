"""One process per run folder: ``RunLock(run)`` holds an exclusive ``flock`` on ``.NAME.lock`` beside the run
folder ``NAME`` while a run trains into it; a second ``pipeline``, ``train`` or ``demo`` on the same run stops in
one line naming the first one's pid. ``hold`` takes it for the rest of the enclosing ``locked_run`` call.

The lock belongs to the open file, so it ends with the process however the process ends (SIGKILL included): a
stale lock file never blocks a later run. Under ``accelerate launch`` only the main process takes it.
"""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dermvlm.io import OutputError
from dermvlm.ranks import is_main_process

F = TypeVar("F", bound=Callable[..., Any])


class RunLocked(OutputError):
    """Another process holds the run folder; the message names it."""


class RunLock:
    """``with RunLock(run_dir): ...``: exclusive use of ``run_dir`` while the block runs."""

    def __init__(self, run_dir: str | Path, command: str = "dermvlm pipeline"):
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.run_dir}: {holder} is already training this run; wait for it to finish "
                            f"or stop it (a second process would write into the same folders)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`{self.command}` (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays (removing it would race a new locker)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: list[RunLock] = []  # the locks taken with ``hold`` in the current ``locked_run`` calls


def locked_run(fn: F) -> F:
    """Release, when ``fn`` returns or raises, every run lock ``hold`` took during the call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = len(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_HELD) > depth:
                _HELD.pop().release()

    return wrapper  # type: ignore[return-value]


def hold(run_dir: str | Path) -> None:
    """Take the lock of ``run_dir`` until the enclosing ``locked_run`` call ends (main process only; a lock this
    process already holds is not taken twice). Called once the inputs are checked, so a refused run leaves no
    lock file."""
    run_dir = Path(run_dir)
    if is_main_process() and not any(lock.run_dir == run_dir for lock in _HELD):
        _HELD.append(RunLock(run_dir).acquire())
