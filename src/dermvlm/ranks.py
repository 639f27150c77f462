"""Which process this is under ``accelerate launch`` / torchrun (``RANK``, ``WORLD_SIZE``), and how the other
processes wait for a file the main one writes. Environment only: usable before any process group exists."""

from __future__ import annotations

import os
import time
from pathlib import Path


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside ``accelerate launch`` and on its rank 0: the one process that builds data and writes files."""
    return rank() == 0


def wait_for(path: Path, content: str | None = None, timeout: float = 7200.0) -> None:
    """Wait for another process to finish writing ``path`` (with ``content`` when given)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and (content is None or path.read_text() == content)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank()} waited {timeout:.0f} s for {path}")
        time.sleep(1.0)
