"""Fitzpatrick17k: ``fitzpatrick17k.csv`` (md5hash, fitzpatrick_scale, label, ...) + a local image folder
(``<md5hash>.jpg``; the dataset ships URLs only, so images are whatever the user downloaded)."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import RawRow, index_images, parse_fitzpatrick, read_csv, rows_with_images


def load(root: Path, images: str | None = None) -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    csv_path = root / "fitzpatrick17k.csv"
    rows = read_csv(csv_path, required=("md5hash", "label", "fitzpatrick_scale"))
    paired, skipped = rows_with_images(rows, index_images(Path(images) if images else root), "md5hash")
    out = []
    for r, path in paired:
        meta = {k: r[k] for k in ("nine_partition_label", "three_partition_label", "qc") if r.get(k)}
        out.append(RawRow(image=str(path), source_label=r["label"], group_id=r["md5hash"],
                          fitzpatrick=parse_fitzpatrick(r["fitzpatrick_scale"]), meta=meta))
    return out, skipped
