"""Suite membership you can check: a suite writes which images it asks about (``members.json``: item ids, group ids
and 64-bit perceptual hashes), and a suite evaluated for a training run is compared, image by image, with that
run's training split, so "the same held-out split as the training recipe" is a check rather than a comment.

Images are compared by perceptual hash (the recipes' near-duplicate measure), so a suite that stores its images at
another size still matches the training copy of the same picture.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

from dermvlm.io import atomic_write_text

MEMBERS = "members.json"
MAX_DISTANCE = 2  # Hamming distance between 64-bit pHashes that counts as the same picture


class SplitOverlapError(ValueError):
    """Suite items whose images are in the training run's train split."""


def image_phash(data: bytes) -> int | None:
    """The image's 64-bit pHash; ``None`` for bytes no image decoder reads (the request then fails as such)."""
    from PIL import Image

    from dermvlm.datasets.images import phash64

    try:
        with Image.open(io.BytesIO(data)) as im:
            return phash64(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError):  # PIL's ways of saying "not an image I can read"
        return None


def write_members(out: Path, items: list[dict[str, Any]]) -> list[int | None]:
    """Write ``members.json`` for the suite's items; return their hashes (in item order; ``None``: unreadable)."""
    hashes = [image_phash(it["image"]) for it in items]
    members = [{"id": it["id"], "image_id": it.get("image_id") or "", "group_id": it.get("group_id") or "",
                "phash": f"{h:016x}" if h is not None else ""}
               for it, h in zip(items, hashes, strict=True)]
    atomic_write_text(out / MEMBERS, json.dumps({"n": len(members), "items": members}, indent=1) + "\n")
    return hashes


def train_hashes(data_dir: Path) -> list[int]:
    """Perceptual hashes of every training image of a built recipe (its ``image_label`` kind, one row per image,
    else every kind's train rows); computed once per build (``key.txt``) in a process, however many suites ask."""
    key = (data_dir / "key.txt").read_text() if (data_dir / "key.txt").is_file() else str(data_dir.stat().st_mtime_ns)
    return list(_train_hashes(str(data_dir.resolve()), key))


@functools.lru_cache(maxsize=4)
def _train_hashes(data_dir: str, key: str) -> tuple[int, ...]:
    data_dir = Path(data_dir)
    from datasets import Image, List, load_from_disk

    kinds = [data_dir / "image_label"] if (data_dir / "image_label" / "dataset_dict.json").exists() else sorted(
        p for p in data_dir.iterdir() if (p / "dataset_dict.json").exists())
    seen: set[int | None] = set()
    for kind in kinds:
        dd = load_from_disk(str(kind))
        if "train" not in dd or "images" not in dd["train"].column_names:
            continue
        for row in dd["train"].cast_column("images", List(Image(decode=False))):
            for image in row["images"]:
                seen.add(image_phash(image["bytes"]))
    seen.discard(None)
    return tuple(sorted(seen))


def check_held_out(suite_name: str, items: list[dict[str, Any]], hashes: list[int | None], data_dir: Path) -> None:
    """Raise ``SplitOverlapError`` when any item's image is (a near copy of) a training image of ``data_dir``."""
    import numpy as np

    if not (data_dir / "recipe.json").exists():
        raise SplitOverlapError(f"{data_dir}: not a built data recipe (no recipe.json); give the run folder whose "
                                "data/ the model was trained on")
    train = np.array(train_hashes(data_dir), dtype=np.uint64)
    if not len(train) or not items:
        return
    readable = [i for i, h in enumerate(hashes) if h is not None]
    mine = np.array([hashes[i] for i in readable], dtype=np.uint64)
    hits = []
    for start in range(0, len(mine), 256):  # blocks keep the distance matrix small
        block = mine[start:start + 256, None] ^ train[None, :]
        near = np.bitwise_count(block).min(axis=1) <= MAX_DISTANCE
        hits += [readable[start + int(i)] for i in np.flatnonzero(near)]
    if hits:
        first = items[hits[0]]
        raise SplitOverlapError(
            f"suite {suite_name}: {len(hits)} of {len(items)} items show images of the training split of "
            f"{data_dir} (e.g. item {first['id']}, image {first.get('image_id') or '?'}, group "
            f"{first.get('group_id') or '?'}); evaluate on a split the "
            "run did not train on (the recipe's test split, or another dataset)")
