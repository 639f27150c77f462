"""The bundled CC0/CC BY sample (``dermvlm/sample_data``): where it is, and its records."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dermvlm.datasets.records import Record


def sample_dir() -> Path:
    """The folder of the bundled sample images and ``records.csv``."""
    return Path(str(resources.files("dermvlm.sample_data")))


def load_sample_records(limit: int | None = None) -> list[Record]:
    """The sample as canonical records (labels resolved by the knowledge graph); with ``limit``, a prefix that
    spreads over the labels (round robin, deterministic)."""
    from dermvlm.datasets.adapters import load_source
    from dermvlm.knowledge import load_graph

    records = load_source("sample", load_graph()).records
    if limit is None:
        return records
    queues: dict[str, list[Record]] = {}
    for r in records:
        queues.setdefault(r.label, []).append(r)
    out: list[Record] = []
    while len(out) < min(limit, len(records)):
        for label in sorted(queues):
            if queues[label] and len(out) < limit:
                out.append(queues[label].pop(0))
    return out
