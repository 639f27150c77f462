"""Values echoed back in messages, cut to a readable length: a 10^6-character field, option or answer is named by
its start and its length, never printed whole (a message stays one line a person can read)."""

from __future__ import annotations

from typing import Any

LIMIT = 80
LINE_LIMIT = 600  # one line of a message (a CLI error line, an error a server answers)


def shown(value: Any, limit: int = LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters with how many were left out."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def clip_line(line: str, limit: int = LINE_LIMIT) -> str:
    """One line of a message, cut to ``limit`` characters with how many were left out."""
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line) - limit:,} more characters)"


def clip_lines(text: str, limit: int = LINE_LIMIT) -> str:
    """Every line of ``text`` cut with ``clip_line``."""
    return "\n".join(clip_line(line, limit) for line in text.split("\n"))
