"""SIGINT and SIGTERM during a long command: unwind (so every started server is stopped by its context manager) and
exit with 128 + the signal's number."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def unwind_on_signals() -> Iterator[list[int]]:
    """Inside the block SIGINT and SIGTERM raise ``KeyboardInterrupt`` (a second one is ignored while unwinding);
    the yielded list receives the signal's number. The previous handlers come back on the way out."""
    caught: list[int] = []

    def on_signal(signum, _frame) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not interrupt the shutdown
        caught.append(signum)
        raise KeyboardInterrupt

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def exit_code(caught: list[int]) -> int:
    """128 + the number of the signal that interrupted (SIGINT when Ctrl-C came some other way)."""
    return 128 + (caught[0] if caught else signal.SIGINT)


def signal_name(caught: list[int]) -> str:
    return signal.Signals(caught[0] if caught else signal.SIGINT).name
