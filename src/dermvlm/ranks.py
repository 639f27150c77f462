"""Which process this is under ``accelerate launch`` / torchrun (``RANK``, ``WORLD_SIZE``). Environment only:
usable before any process group exists (``distributed.py`` has the group and its barrier)."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside ``accelerate launch`` and on its rank 0: the one process that builds data and writes files."""
    return rank() == 0
