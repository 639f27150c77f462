"""The bundled CC0/CC BY sample (``dermvlm/sample_data``) as canonical records."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

from dermvlm.datasets.records import Record

# Dataset codes → label ids. Until the knowledge graph resolves labels, these are the graph's disease names.
SAMPLE_LABELS = {
    "melanoma": "melanoma", "nevus": "melanocytic nevus", "MEL": "melanoma", "NEV": "melanocytic nevus",
    "ACK": "actinic keratosis", "BCC": "basal cell carcinoma", "SCC": "squamous cell carcinoma",
    "SEK": "seborrheic keratosis",
}


def sample_dir() -> Path:
    """The folder of the bundled sample images and ``records.csv``."""
    return Path(str(resources.files("dermvlm.sample_data")))


def load_sample_records(limit: int | None = None) -> list[Record]:
    """All bundled sample images (split ``train``: the sample is for demos, not for measuring)."""
    root = sample_dir()
    with open(root / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if limit is not None:
        rows = _round_robin_by_label(rows)[:limit]
    records = []
    for r in rows:
        records.append(Record(
            image=str(root / r["image"]),
            label=SAMPLE_LABELS[r["source_label"]],
            source_label=r["source_label"],
            dataset=r["dataset"],
            split="train",
            group_id=r["group_id"],
            fitzpatrick=int(r["fitzpatrick"]) if r["fitzpatrick"] else None,
            site=r["site"] or None,
            meta={k: r[k] for k in ("age", "sex", "licence", "source") if r[k]},
        ))
    return records


def _round_robin_by_label(rows: list[dict]) -> list[dict]:
    """Rows reordered so that any prefix spreads over the labels (deterministic)."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(SAMPLE_LABELS[r["source_label"]], []).append(r)
    queues = [by_label[k] for k in sorted(by_label)]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out
