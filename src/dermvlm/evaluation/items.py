"""Evaluation items for a suite: built with the data recipes' ``eval_item`` kind, or non-skin photographs."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from dermvlm.config import RecipeConfig, SuiteConfig
from dermvlm.datasets.split_assignment import SplitTable
from dermvlm.recipes.text import OPEN_QUESTIONS


def build_items(suite: SuiteConfig, out: Path, overrides: list[dict] | None = None, base: Path | None = None,
                splits: SplitTable | None = None) -> list[dict[str, Any]]:
    """Rows with ``id``, ``question``, ``options``, ``answer``, ``type``, gold metadata and ``image`` (bytes).
    ``splits``: a run's split assignment, which the images and groups it lists keep here."""
    if suite.format == "built":
        rows = built_items(data_path(suite, base), [suite.split] if suite.split != "all" else None)
    elif suite.format != "recipe":
        rows = _benchmark_items(suite, base)
    else:
        rows = nonskin_items() if suite.abstention else _recipe_items(suite, out, overrides, base, splits)
    if suite.limit:
        rows = rows[: suite.limit]
    if suite.corruption:
        rows = corrupted(rows, suite.corruption.name, suite.corruption.severity, suite.seed)
    return rows


def corrupted(rows: list[dict[str, Any]], name: str, severity: int, seed: int = 0, first: int | None = None
              ) -> list[dict[str, Any]]:
    """The items with their images corrupted (``evaluation.corruptions``) and ids of their own
    (``<id>~<name>-<k>``), so answers about clean and corrupted images never mix in a cache. With ``first``, only the
    first ``first`` images are corrupted and the rest carry no image (they only name the suite's items)."""
    from dermvlm.evaluation.corruptions import corrupt_bytes

    n = len(rows) if first is None else first
    return [r | {"id": f"{r['id']}~{name}-{severity}", "corruption": f"{name}-{severity}",
                 "image": corrupt_bytes(r["image"], name, severity, seed) if i < n else None}
            for i, r in enumerate(rows)]


def data_path(suite: SuiteConfig, base: Path | None) -> Path:
    """The suite's ``data:`` (relative to the suite's folder)."""
    if not suite.data:
        raise ValueError(f"suite {suite.name}: format {suite.format} needs data: FILE (or --data FILE)")
    path = Path(suite.data)
    if not path.is_absolute() and base is not None and not path.exists():
        path = base / path
    return path


def _benchmark_items(suite: SuiteConfig, base: Path | None) -> list[dict[str, Any]]:
    """The items of the suite's benchmark file (only its first ``limit`` rows are read)."""
    from dermvlm.evaluation.external import read_benchmark

    return read_benchmark(data_path(suite, base), suite.format, suite.limit, suite.allow_outside_images)


def built_items(data_dir: Path, splits: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``eval_item`` rows of a built recipe folder (``splits``: these only, in this order; None: every one)."""
    from datasets import Image, List, load_from_disk

    if not (data_dir / "eval_item" / "dataset_dict.json").is_file():
        raise ValueError(f"{data_dir}: no eval_item rows were built there (enable the eval_item kind in the recipe)")
    ds = load_from_disk(str(data_dir / "eval_item"))
    rows = []
    for split in splits or ["train", "val", "test"]:
        if split not in ds:
            continue
        data = ds[split].cast_column("images", List(Image(decode=False)))  # keep the stored bytes
        for row in data:
            row = dict(row)
            row["image"] = row.pop("images")[0]["bytes"]
            rows.append(row)
    return rows


def suite_recipe(suite: SuiteConfig) -> RecipeConfig:
    """The recipe a suite's items are built with: its sources, split fractions and seed, the eval_item kind."""
    return RecipeConfig.model_validate({
        "name": f"eval-{suite.name}", "seed": suite.seed, "sources": [s.model_dump() for s in suite.sources] or
        [{"name": "sample"}], "image": suite.image.model_dump(), "split": suite.split_fractions.model_dump(),
        "kinds": {"eval_item": {"splits": _splits(suite), "types": suite.types, "options": suite.options,
                                "distractors": suite.distractors}},
    })


def _splits(suite: SuiteConfig) -> list[str]:
    return ["train", "val", "test"] if suite.split == "all" else [suite.split]


def _recipe_items(suite: SuiteConfig, out: Path, overrides, base, splits: SplitTable | None = None
                  ) -> list[dict[str, Any]]:
    from dermvlm.recipes.build import build

    build(suite_recipe(suite), out, overrides, progress=False, base=base, splits=splits)
    return built_items(out, _splits(suite))


def nonskin_items(crops_per_image: int = 4) -> list[dict[str, Any]]:
    """Real photographs that are not skin (scikit-learn's sample images: a temple and a flower), whole and cropped:
    the right answer is to say the image is not of skin."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rows = []
    data = load_sample_images()
    for path, array in zip(data.filenames, data.images, strict=True):
        im = Image.fromarray(array)
        w, h = im.size
        views = [im] + [im.crop((x, y, x + w // 2, y + h // 2)) for x, y in
                        [(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)][:crops_per_image]]
        for i, view in enumerate(views):
            view = view.copy()
            view.thumbnail((384, 384))
            buf = io.BytesIO()
            view.save(buf, "JPEG", quality=90)
            data_bytes = buf.getvalue()
            rows.append({
                "id": hashlib.sha256(data_bytes).hexdigest()[:16], "question": OPEN_QUESTIONS[0], "options": [],
                "answer": "abstain", "type": "abstention", "label": "not_skin", "label_name": "not skin",
                "dataset": f"sklearn:{Path(path).name}#{i}", "split": "test", "group_id": Path(path).stem,
                "fitzpatrick": 0, "fitzpatrick_group": "", "site": "", "malignancy": "", "source_label": "not skin",
                "skin_tone_ita": None, "tone_group": "", "artefacts": [], "record_facts": "", "image": data_bytes,
            })
    return rows
