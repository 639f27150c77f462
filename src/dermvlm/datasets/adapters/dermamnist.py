"""DermaMNIST: the folder + ``labels.csv`` layout (``../shared/data/dermamnist``) or the official MedMNIST ``.npz``."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import DatasetError, RawRow, read_csv

# MedMNIST's label indices for DermaMNIST (medmnist INFO["dermamnist"]["label"]).
NPZ_LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
NPZ_SPLITS = {"train": "train", "val": "val", "test": "test"}


def load(root: Path) -> tuple[list[RawRow], list[tuple[str, str]]]:
    root = Path(root)
    npz = [root] if root.suffix == ".npz" else sorted(root.glob("*.npz"))
    if npz and not (root / "labels.csv").exists():
        return _from_npz(npz[0])
    rows = read_csv(root / "labels.csv", required=("image_id", "dx"))
    out = []
    for r in rows:
        image_id = r["image_id"]
        parts = image_id.split("_")
        split = parts[1] if len(parts) > 2 and parts[1] in NPZ_SPLITS else None
        out.append(RawRow(image=str(root / "images" / f"{image_id}.jpg"), source_label=r["dx"], split=split,
                          group_id=r.get("lesion_id") or image_id, meta={"image_id": image_id}))
    return out, []


def _from_npz(path: Path) -> tuple[list[RawRow], list[tuple[str, str]]]:
    """Extract the official arrays to PNG files once (beside the .npz) and describe them."""
    import numpy as np
    from PIL import Image

    try:
        data = np.load(path)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable .npz ({err})") from None
    missing = [f"{s}_{k}" for s in NPZ_SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data.files]
    if missing:
        raise DatasetError(f"{path}: missing arrays {', '.join(missing)}; has {', '.join(data.files)}")
    out_dir = path.with_name(f"{path.stem}_images")
    out_dir.mkdir(exist_ok=True)
    rows = []
    for split in NPZ_SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            name = f"DermaMNIST_{split}_{i:05d}.png"
            target = out_dir / name
            if not target.exists():
                tmp = target.with_suffix(".tmp.png")
                Image.fromarray(img).save(tmp)
                tmp.replace(target)
            rows.append(RawRow(image=str(target), source_label=NPZ_LABELS[int(lab)], split=split,
                               group_id=name, meta={"image_id": name}))
    return rows, []
