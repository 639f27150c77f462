"""Regenerate the bundled sample (src/dermvlm/sample_data) from ../shared/data: CC0 and CC BY images only.

40 ISIC CC0 dermoscopy images (20 melanoma, 20 nevus, chosen with seed 0) and the 32 PAD-UFES-20 (CC BY 4.0)
clinical photos, downscaled so the longer side is at most 384 px and re-encoded as JPEG (quality 90), with the
licence and attribution files and one ``records.csv`` describing every image. Run from the project root.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageOps

from dermvlm.datasets.adapters.pad_ufes_20 import SYMPTOMS  # PAD-UFES-20's clinical fields

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "src" / "dermvlm" / "sample_data"
MAX_SIDE = 384
FIELDS = ["image", "dataset", "source_label", "group_id", "fitzpatrick", "site", "age", "sex", "symptoms",
          "symptoms_absent", "licence", "source"]



def save_small(src: Path, dst: Path) -> None:
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=90, optimize=True)


def isic_rows(n_per_class: int = 20) -> list[dict]:
    meta = {}
    for f in sorted((SHARED / "isic_cc0" / "metadata").glob("*.json")):
        m = json.loads(f.read_text())
        meta[m["name"]] = m["meta"]["clinical"]
    rng = random.Random(0)
    rows = []
    for dx in ("melanoma", "nevus"):
        names = sorted(n for n, c in meta.items() if c.get("diagnosis") == dx)
        for name in sorted(rng.sample(names, n_per_class)):
            c = meta[name]
            save_small(SHARED / "isic_cc0" / "images" / f"{name}.jpg", OUT / "isic" / f"{name}.jpg")
            rows.append({
                "image": f"isic/{name}.jpg", "dataset": "isic", "source_label": dx, "group_id": name,
                "fitzpatrick": "", "site": "", "age": c.get("age_approx") or "", "sex": c.get("sex") or "",
                "symptoms": "", "symptoms_absent": "", "licence": "CC0-1.0",
                "source": "ISIC Archive UDA-1 (via ../shared/data/isic_cc0)",
            })
    return rows


def pad_rows() -> list[dict]:
    with open(SHARED / "pad_ufes_20" / "metadata.csv", newline="") as f:
        meta = {r["img_id"]: r for r in csv.DictReader(f)}
    rows = []
    for img in sorted((SHARED / "pad_ufes_20" / "images").glob("*.png")):
        r = meta[img.name]
        save_small(img, OUT / "pad_ufes_20" / f"{img.stem}.jpg")
        fitz = r["fitspatrick"].split(".")[0] if r["fitspatrick"] else ""
        rows.append({
            "image": f"pad_ufes_20/{img.stem}.jpg", "dataset": "pad_ufes_20", "source_label": r["diagnostic"],
            "group_id": r["patient_id"], "fitzpatrick": fitz, "site": r["region"].lower(), "age": r["age"],
            "sex": r["gender"].lower(), "licence": "CC-BY-4.0",
            "symptoms": ";".join(s for s in SYMPTOMS if r[s] == "True"),
            "symptoms_absent": ";".join(s for s in SYMPTOMS if r[s] == "False"),
            "source": "PAD-UFES-20, Pacheco et al. 2020, doi:10.17632/zr7vgbcyr2.1 (downscaled, JPEG)",
        })
    return rows


def main() -> None:
    for folder in ("isic", "pad_ufes_20"):  # what this script writes; README.md (attribution) is kept
        if (OUT / folder).exists():
            shutil.rmtree(OUT / folder)
    rows = isic_rows() + pad_rows()
    with open(OUT / "records.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    shutil.copy(SHARED / "isic_cc0" / "LICENSE.txt", OUT / "isic" / "LICENSE.txt")
    shutil.copy(SHARED / "isic_cc0" / "ATTRIBUTION.txt", OUT / "isic" / "ATTRIBUTION.txt")
    (OUT / "__init__.py").write_text('"""The bundled CC0/CC BY sample images (see README.md here)."""\n')
    print(f"{len(rows)} images -> {OUT}")


if __name__ == "__main__":
    main()
