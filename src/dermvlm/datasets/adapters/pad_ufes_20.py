"""PAD-UFES-20: ``metadata.csv`` (patient grouping, Fitzpatrick, region, symptoms
present and absent: the record's facts that reasoning traces state and the scorer checks) + ``images/``."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import RawRow, index_images, parse_fitzpatrick, read_csv, rows_with_images
from dermvlm.knowledge.grounding import PAD_UFES_FIELDS

SYMPTOMS = tuple(PAD_UFES_FIELDS)  # itch, grew, hurt, changed, bleed, elevation


def load(root: Path) -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    rows = read_csv(root / "metadata.csv", required=("patient_id", "img_id", "diagnostic"))
    paired, skipped = rows_with_images(rows, index_images(root), "img_id")
    out = []
    for r, path in paired:
        meta = {k: r[k] for k in ("age", "gender", "diameter_1", "diameter_2", "biopsed", "lesion_id") if r.get(k)}
        meta["symptoms"] = [s for s in SYMPTOMS if r.get(s) == "True"]
        meta["symptoms_absent"] = [s for s in SYMPTOMS if r.get(s) == "False"]  # "UNK" is neither
        out.append(RawRow(image=str(path), source_label=r["diagnostic"], group_id=r["patient_id"],
                          fitzpatrick=parse_fitzpatrick(r.get("fitspatrick")), site=r.get("region") or None,
                          meta=meta))
    return out, skipped
