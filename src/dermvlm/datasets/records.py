"""The canonical record that every dataset adapter yields (DESIGN.md, "Canonical formats")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """One labeled image. ``label`` is a knowledge-graph node id; ``source_label`` is the dataset's own."""

    image: str
    label: str
    source_label: str
    dataset: str
    split: str
    group_id: str
    fitzpatrick: int | None = None
    site: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
