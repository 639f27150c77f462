"""Generic sources: an ImageFolder tree (``[split/]class/image``) and a CSV with configurable columns."""

from __future__ import annotations

import typing
from pathlib import Path

from dermvlm.config.recipe import Modality
from dermvlm.datasets.adapters.common import (
    IMAGE_SUFFIXES,
    SPLITS,
    DatasetError,
    RawRow,
    folded_index,
    index_images,
    lookup_image,
    parse_fitzpatrick,
    read_csv_lines,
)
from dermvlm.datasets.group_detection import group_column

MODALITIES = typing.get_args(Modality)


def check_modality(modality: str | None) -> None:
    if modality is not None and modality not in MODALITIES:
        raise DatasetError(f"modality {modality!r}: choose one of {', '.join(MODALITIES)}")


def load_imagefolder(root: Path, modality: str | None = None) -> tuple[list[RawRow], list[tuple[str, str]]]:
    """``root/<class>/*.jpg`` or ``root/<split>/<class>/*.jpg`` (split folders train/val/test); ``modality`` says
    what the images are ("clinical photograph", "dermoscopic image") for the training text."""
    check_modality(modality)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name in SPLITS]
    tops = [(d, d.name) for d in split_dirs] if split_dirs else [(root, None)]
    out = []
    for top, split in tops:
        for cls in sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for p in sorted(cls.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(RawRow(image=str(p), source_label=cls.name.replace("_", " "), split=split,
                                      meta={"modality": modality} if modality else {}))
    if not out:
        raise DatasetError(f"{root}: no images in class sub-folders (expected root/<class>/<image>)")
    return out, []


def load_csv(labels: Path, images: Path | None = None, image_col: str = "image", label_col: str = "label",
             group_col: str | None = None, split_col: str | None = None, site_col: str | None = None,
             fitzpatrick_col: str | None = None, encoding: str = "utf-8", allow_outside_images: bool = False,
             modality: str | None = None) -> tuple[list[RawRow], list]:
    """A CSV naming image files (relative to ``images`` or absolute) and their labels. When ``images`` is given, a
    path that leaves it (``../x.jpg``, an absolute path elsewhere, a link out) is refused unless
    ``allow_outside_images``. Without ``group_col``, a patient/lesion column is used when the CSV has one
    (``group_detection``). ``modality`` says what the images are, for the training text."""
    check_modality(modality)
    labels = Path(labels)
    required = [c for c in (image_col, label_col, group_col, split_col, site_col, fitzpatrick_col) if c]
    rows = read_csv_lines(labels, required=required, encoding=encoding)
    if group_col is None:
        group_col = group_column(list(rows[0][1]), [r.get(image_col, "") for _, r in rows], str(labels))
    base = Path(images) if images else labels.parent
    found = index_images(base) if base.is_dir() else {}
    folded = folded_index(found)
    inside = base.resolve()
    out, skipped = [], []
    for line, r in rows:
        name = r[image_col]
        if not name:
            skipped.append((f"{labels.name} line {line}", f"empty {image_col!r} cell"))
            continue
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.exists():
            path = lookup_image(found, name, folded) or path
        if images and not allow_outside_images and not path.resolve().is_relative_to(inside):
            raise DatasetError(f"{labels}: row {line}, column {image_col!r}: {name!r} points outside the images "
                               f"folder {base} (to {path.resolve()}); move the image in, or set the source option "
                               f"allow_outside_images: true")
        if not r[label_col]:
            skipped.append((name, "empty label"))
            continue
        split = r.get(split_col) if split_col else None
        if split and split not in SPLITS:
            raise DatasetError(f"{labels}: row {line}, column {split_col!r} has {split!r}; allowed: "
                               f"{', '.join(SPLITS)}")
        out.append(RawRow(image=str(path), source_label=r[label_col], split=split,
                          group_id=r.get(group_col) if group_col else None,
                          site=r.get(site_col) if site_col else None,
                          fitzpatrick=parse_fitzpatrick(r.get(fitzpatrick_col)) if fitzpatrick_col else None,
                          meta={"modality": modality} if modality else {}))
    return out, skipped
