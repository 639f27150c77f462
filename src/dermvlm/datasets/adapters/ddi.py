"""DDI (Diverse Dermatology Images): ``ddi_metadata.csv`` (DDI_file, skin_tone 12/34/56, malignant, disease) +
images. Skin tone is given as Fitzpatrick bands (I-II, III-IV, V-VI), kept in ``meta['fitzpatrick_group']``."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import RawRow, index_images, read_csv, rows_with_images

TONES = {"12": "I-II", "34": "III-IV", "56": "V-VI"}


def load(root: Path, metadata: str = "ddi_metadata.csv") -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    rows = read_csv(root / metadata, required=("DDI_file", "skin_tone", "disease"))
    paired, skipped = rows_with_images(rows, index_images(root), "DDI_file")
    out = []
    for r, path in paired:
        meta = {"fitzpatrick_group": TONES.get(r["skin_tone"]), "malignant": r.get("malignant")}
        out.append(RawRow(image=str(path), source_label=r["disease"], group_id=r.get("DDI_ID") or r["DDI_file"],
                          meta=meta))
    return out, skipped
