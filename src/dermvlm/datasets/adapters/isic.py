"""ISIC: per-image JSON metadata (``metadata/ISIC_x.json`` + ``images/``, as in ``../shared/data/isic_cc0``) or a CSV
export of the ISIC Archive (``isic_id``, ``diagnosis`` or ``diagnosis_1..5``, ``anatom_site_general``, ...)."""

from __future__ import annotations

import json
from pathlib import Path

from dermvlm.datasets.adapters.common import DatasetError, RawRow, index_images, parse_fitzpatrick, read_csv


def load(root: Path, csv_name: str | None = None) -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    csvs = [root / csv_name] if csv_name else sorted(root.glob("*.csv"))
    if (root / "metadata").is_dir() and not csv_name:
        return _from_json(root)
    if not csvs:
        raise DatasetError(f"{root}: neither a metadata/ folder of ISIC JSON files nor an ISIC CSV export")
    return _from_csv(root, csvs[0])


def _from_json(root: Path) -> tuple[list[RawRow], list[tuple[str, str]]]:
    images = index_images(root / "images" if (root / "images").is_dir() else root)
    out, skipped = [], []
    for f in sorted((root / "metadata").glob("*.json")):
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
            clinical = m["meta"]["clinical"]
            name = m.get("name") or f.stem
        except (ValueError, KeyError, UnicodeDecodeError) as err:
            skipped.append((str(f), f"unreadable ISIC JSON ({err.__class__.__name__}: {err})"))
            continue
        if name not in images:
            skipped.append((name, "image file not found"))
            continue
        if not clinical.get("diagnosis"):
            skipped.append((name, "no diagnosis in metadata"))
            continue
        meta = {k: clinical[k] for k in ("benign_malignant", "age_approx", "sex", "diagnosis_confirm_type",
                                         "melanocytic") if clinical.get(k) is not None}
        out.append(RawRow(image=str(images[name]), source_label=clinical["diagnosis"], group_id=name,
                          site=clinical.get("anatom_site_general") or None, meta=meta))
    return out, skipped


def _from_csv(root: Path, path: Path) -> tuple[list[RawRow], list[tuple[str, str]]]:
    rows = read_csv(path, required=("isic_id",))
    label_cols = [c for c in ("diagnosis", "diagnosis_3", "diagnosis_2", "diagnosis_1") if c in rows[0]]
    if not label_cols:
        raise DatasetError(f"{path}: no diagnosis column (diagnosis or diagnosis_1..3)")
    images = index_images(root)
    out, skipped = [], []
    for r in rows:
        label = next((r[c] for c in label_cols if r.get(c)), "")
        if r["isic_id"] not in images:
            skipped.append((r["isic_id"], "image file not found"))
            continue
        if not label:
            skipped.append((r["isic_id"], "no diagnosis"))
            continue
        group = r.get("lesion_id") or r.get("patient_id") or r["isic_id"]
        meta = {k: r[k] for k in ("age_approx", "sex", "benign_malignant", "patient_id") if r.get(k)}
        out.append(RawRow(image=str(images[r["isic_id"]]), source_label=label.split(":")[-1].strip(),
                          group_id=group, site=r.get("anatom_site_general") or None,
                          fitzpatrick=parse_fitzpatrick(r.get("fitzpatrick_skin_type")), meta=meta))
    return out, skipped
