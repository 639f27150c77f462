"""How well ``dermvlm data audit`` finds faults planted in DermaMNIST (``../shared/data/dermamnist``, all 10,015
images): 2% of labels flipped to another class, 1% non-skin images added (crops of scikit-learn's two real sample
photographs, at DermaMNIST's 28 px), and 20 test images copied into train (exact cross-split duplicates). Reports
each ranking's precision and recall at k = the number planted (and at 2k), and the audit's wall time, in
``benchmarks/results/audit_planted.json`` (``--classifier features``, the default) or
``audit_planted_<classifier>[_s<seed>].json``; with ``both``, the label-error ranking of each classifier alone too.
Nothing is copied into the project: the planted set lives under ``runs/audit_planted/<classifier>_s<seed>/``.

    python benchmarks/audit/planted_faults.py [--seed 0] [--classifier features|cnn|both]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from dermvlm.audit import audit
from dermvlm.config import RecipeConfig
from dermvlm.datasets.adapters import load_source
from dermvlm.io import atomic_write_text
from dermvlm.knowledge import load_graph

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "dermamnist"


def nonskin(n: int, rng: random.Random) -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    out = []
    for _ in range(n):
        im = rng.choice(photos)
        s = rng.randint(60, 200)
        x, y = rng.randint(0, im.width - s), rng.randint(0, im.height - s)
        out.append(im.crop((x, y, x + s, y + s)).resize((28, 28), Image.Resampling.BOX))
    return out


def at_k(ranked: list[str], planted: set[str], k: int) -> dict[str, float]:
    hits = len(set(ranked[:k]) & planted)
    return {"k": k, "precision": round(hits / k, 3), "recall": round(hits / len(planted), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier", choices=["features", "cnn", "both"], default="features")
    ap.add_argument("--work", type=Path, default=None,
                    help="default: runs/audit_planted/<classifier>_s<seed> (one per run, so runs can go in parallel)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/audit_planted[...].json")
    args = ap.parse_args()
    if args.out is None:
        name = "audit_planted" + ("" if args.classifier == "features" else f"_{args.classifier}") \
            + ("" if args.seed == 0 else f"_s{args.seed}")
        args.out = ROOT / "benchmarks" / "results" / f"{name}.json"
    if args.work is None:
        args.work = ROOT / "runs" / "audit_planted" / f"{args.classifier}_s{args.seed}"
    rng = random.Random(args.seed)
    kg = load_graph()
    records = load_source("dermamnist", kg, root=str(DATA)).records
    classes = sorted({r.label for r in records})
    marker = args.work / ".planted_faults"
    if args.work.exists() and any(args.work.iterdir()):
        if not marker.exists():
            sys.exit(f"error: {args.work} exists and was not written by this script; give another --work")
        shutil.rmtree(args.work)  # our own earlier planted set
    (args.work / "images").mkdir(parents=True)
    marker.write_text("written by benchmarks/audit/planted_faults.py\n")
    rows, flipped, extra, dups = [], set(), set(), set()
    for r in records:
        label = r.label
        if rng.random() < 0.02:
            label = rng.choice([c for c in classes if c != r.label])
            flipped.add(Path(r.image).stem)
        rows.append({"image": r.image, "label": label, "split": r.split})
    for i, im in enumerate(nonskin(len(records) // 100, rng)):
        path = args.work / "images" / f"nonskin_{i:03d}.png"
        im.save(path)
        rows.append({"image": str(path), "label": rng.choice(classes), "split": rng.choice(["train", "val", "test"])})
        extra.add(path.stem)
    test = [r for r in records if r.split == "test"]
    for i, r in enumerate(rng.sample(test, 20)):
        path = args.work / "images" / f"copy_{i:02d}_{Path(r.image).stem}.png"
        Image.open(r.image).convert("RGB").save(path)
        rows.append({"image": str(path), "label": r.label, "split": "train"})
        dups.add(path.stem)
    labels = args.work / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    recipe = RecipeConfig.model_validate({"name": "dermamnist-planted", "seed": args.seed, "sources": [{"name": "csv"}],
                                          "kinds": {"image_label": {"splits": ["train", "val", "test"]}}})
    overrides = [{"name": "csv", "options": {"labels": str(labels), "split_col": "split",
                                             "allow_outside_images": True}}]
    started = time.perf_counter()
    result = audit(recipe, args.work / "audit", overrides, classifier=args.classifier)
    seconds = time.perf_counter() - started
    rows_by_id = {r["id"]: r for r in result["per_image"]}
    def ranked(key: str) -> list[str]:
        return [r["id"] for r in sorted((r for r in result["per_image"] if key in r), key=lambda r: r[key])]

    by_label = ranked("label_confidence")
    by_topic = [r["id"] for r in sorted(result["per_image"], key=lambda r: -r["off_topic"])]
    found_dups = {p["a"] if p["a"] in dups else p["b"] for p in result["duplicates"]["pairs"]
                  if p["kind"] == "exact" and (p["a"] in dups or p["b"] in dups)}
    excluded = {e["image"] for e in result["exclude"]}
    held = {e["image"] for e in result["held_for_review"]}
    planted = flipped | extra | dups
    summary = {
        "images": result["images"], "audit_seconds": round(seconds, 1), "seed": args.seed,
        "planted": {"flipped_labels": len(flipped), "non_skin": len(extra), "cross_split_copies": len(dups)},
        "label_errors": {"at_k": at_k(by_label, flipped, len(flipped)), "at_2k": at_k(by_label, flipped,
                                                                                    2 * len(flipped))},
        "off_topic": {"at_k": at_k(by_topic, extra, len(extra)), "at_2k": at_k(by_topic, extra, 2 * len(extra))},
        "duplicates": {"found": len(found_dups), "of": len(dups),
                       "cross_split_pairs": result["duplicates"]["cross_split_pairs"]},
        "exclude_list": {"entries": len(excluded), "planted_in_it": len(excluded & planted),
                         "precision": round(len(excluded & planted) / max(1, len(excluded)), 3),
                         "recall": round(len(excluded & planted) / len(planted), 3),
                         # val/test label-error candidates are held for review, never proposed for exclusion
                         "held_for_review": len(held), "planted_held": len(held & planted)},
        "label_classifier": result["label_classifier"],
        "label_error_threshold": result["thresholds"]["label_confidence"],
        "flipped_label_ranks_median": sorted(by_label.index(i) for i in flipped if i in rows_by_id)[len(flipped) // 2],
    }
    for name in ("features", "cnn"):  # each classifier alone, when the audit averaged both
        alone = ranked(f"label_confidence_{name}")
        if alone:
            summary["label_errors"][name] = {"at_k": at_k(alone, flipped, len(flipped)),
                                             "at_2k": at_k(alone, flipped, 2 * len(flipped))}
    atomic_write_text(args.out, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
