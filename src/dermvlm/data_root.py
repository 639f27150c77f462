"""One data-root setting: recipes, suites and configs write real datasets as ``../shared/data/NAME`` (this
project's layout); ``DERMVLM_DATA_ROOT`` (or ``--data-root``) moves that folder for every one of them at once.
``DERMVLM_SHARED_DATA``, the tests' older name, is read too."""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "../shared/data"
ENV = "DERMVLM_DATA_ROOT"


def data_root() -> Path | None:
    """The configured data root, if any."""
    value = os.environ.get(ENV) or os.environ.get("DERMVLM_SHARED_DATA")
    return Path(value).expanduser() if value else None


def rerooted(path: str) -> str:
    """``path`` with a leading ``../shared/data`` replaced by the data root (unchanged when none is set)."""
    root = data_root()
    norm = path.replace("\\", "/")
    if root is None or not (norm == PREFIX or norm.startswith(PREFIX + "/")):
        return path
    return str(root / norm[len(PREFIX):].lstrip("/"))
