"""HAM10000: ``HAM10000_metadata.csv`` (lesion_id, image_id, dx, dx_type, age, sex, localization) + image folders.

Several images show the same lesion; ``lesion_id`` is the group, so splits never cut a lesion.
"""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import RawRow, index_images, read_csv, rows_with_images


def load(root: Path, metadata: str = "HAM10000_metadata.csv") -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    rows = read_csv(root / metadata, required=("lesion_id", "image_id", "dx"))
    paired, skipped = rows_with_images(rows, index_images(root), "image_id")
    out = []
    for r, path in paired:
        meta = {k: r[k] for k in ("dx_type", "age", "sex", "localization") if r.get(k)}
        out.append(RawRow(image=str(path), source_label=r["dx"], group_id=r["lesion_id"],
                          site=r.get("localization") or None, meta=meta))
    return out, skipped
