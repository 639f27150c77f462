"""The bundled CC0/CC BY sample (``dermvlm/sample_data``): ISIC dermoscopy and PAD-UFES-20 photos."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import RawRow, parse_fitzpatrick, read_csv
from dermvlm.datasets.sample import sample_dir


def load(root: Path | None = None) -> tuple[list[RawRow], list[tuple[str, str]]]:
    base = Path(root) if root else sample_dir()
    out = []
    for r in read_csv(base / "records.csv", required=("image", "dataset", "source_label", "group_id")):
        meta = {k: r[k] for k in ("age", "sex", "licence", "source") if r.get(k)}
        for k in ("symptoms", "symptoms_absent"):  # PAD-UFES-20's clinical fields, ";"-separated
            if r.get(k):
                meta[k] = r[k].split(";")
        out.append(RawRow(image=str(base / r["image"]), source_label=r["source_label"], group_id=r["group_id"],
                          fitzpatrick=parse_fitzpatrick(r.get("fitzpatrick")), site=r.get("site") or None,
                          meta={**meta, "source_dataset": r["dataset"]}, label_dataset=r["dataset"]))
    return out, []
