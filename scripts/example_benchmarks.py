"""Write the small example benchmarks in the standard formats from the bundled CC0/CC BY sample's test split (the
split ``data_recipes/sample.yaml`` holds out, so the demo never trains on them): ``eval/example_benchmark/``

- ``derm_mcq.tsv``: VLMEvalKit-style (index, image as base64 JPEG, question, A-D, answer letter, category);
- ``derm_open.jsonl``: image (a path relative to the file, in ``images/`` beside it: a benchmark's images stay in
  its folder, ``eval --data`` refuses paths that leave it), question, answer (the diagnosis, in words).

    python scripts/example_benchmarks.py
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "eval" / "example_benchmark"


def main() -> None:
    from PIL import Image

    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.datasets.sample import load_sample_records
    from dermvlm.datasets.split_assignment import assign_splits
    from dermvlm.knowledge import load_graph

    recipe = load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig)
    records = load_sample_records()
    assign_splits(records, recipe.split.val, recipe.split.test, recipe.seed)
    test = sorted((r for r in records if r.split == "test"), key=lambda r: r.image)
    kg = load_graph()
    labels = sorted({r.label for r in records})
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images").mkdir(exist_ok=True)
    thumbs = {}
    for r in test:
        with Image.open(r.image) as im:
            im = im.convert("RGB")
            im.thumbnail((192, 192))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
        thumbs[r.image] = buf.getvalue()
        (OUT / "images" / f"{Path(r.image).stem}.jpg").write_bytes(buf.getvalue())
    with (OUT / "derm_mcq.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["index", "image", "question", "A", "B", "C", "D", "answer", "category"])
        for i, r in enumerate(test):
            others = rng.sample([x for x in labels if x != r.label], 3)
            options = [kg.name(x) for x in [r.label, *others]]
            rng.shuffle(options)
            answer = "ABCD"[options.index(kg.name(r.label))]
            w.writerow([i, base64.b64encode(thumbs[r.image]).decode(), "What is the most likely diagnosis?",
                        *options, answer, kg.malignancy(r.label) or "unknown"])
    with (OUT / "derm_open.jsonl").open("w") as fh:
        for r in test:
            fh.write(json.dumps({"id": Path(r.image).stem, "image": f"images/{Path(r.image).stem}.jpg",
                                 "question": "What is the diagnosis? Answer with the name only.",
                                 "answer": kg.name(r.label), "category": r.dataset}) + "\n")
    (OUT / "images" / "README.md").write_text(
        "192 px thumbnails of the bundled sample's held-out images (`src/dermvlm/sample_data/`; its `records.csv` "
        "gives each image's licence, CC0 or CC BY, and source), written by `scripts/example_benchmarks.py`.\n")
    print(f"wrote {len(test)} items to {OUT}/derm_mcq.tsv and derm_open.jsonl")


if __name__ == "__main__":
    main()
