"""``run_interruptible(coro)``: ``asyncio.run`` for the evaluation's request loops, where SIGINT / SIGTERM cancel the
loop cleanly instead of raising ``KeyboardInterrupt`` in the middle of whichever task happens to run.

A ``KeyboardInterrupt`` raised inside a task (the CLI turns SIGTERM into one, so that servers are stopped) leaves
that task failed and the others mid-request; ``asyncio.run`` then logs each as "unhandled exception during
asyncio.run() shutdown", hundreds of traceback lines for one Ctrl-C. Here the signal cancels the main task (its
``finally`` blocks cancel the requests and close the client), and once the loop is closed the signal goes to the
handler that was there before (the CLI's: one line, servers stopped, exit 128 + N).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``; on SIGINT / SIGTERM, ``main`` is cancelled and the signal then re-delivered to the
    previous Python handler (``KeyboardInterrupt`` if that handler returns)."""
    caught: list[int] = []

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                handler = signal.getsignal(sig)
                if handler in (signal.SIG_IGN, None):
                    continue

                def on_signal(sig: int = sig) -> None:
                    if not caught and task is not None:
                        caught.append(sig)
                        task.cancel()

                loop.add_signal_handler(sig, on_signal)
                previous[sig] = handler
        try:
            return await main
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if not caught:
            raise
    handler = signal.getsignal(caught[0])
    if callable(handler):
        handler(caught[0], None)
    raise KeyboardInterrupt
