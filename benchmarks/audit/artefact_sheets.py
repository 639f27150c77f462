"""Contact sheets of the artefact detectors and the ITA tone groups (``dermvlm.datasets.image_facts``) on the real
images in ``../shared/data`` (ISIC CC0 dermoscopy, PAD-UFES-20 clinical photos), so a person can judge each tag's
precision by eye. The detectors' thresholds were set on the ``tuning`` part (the first 60 ISIC and first 40 PAD
images by name); ``holdout`` is the rest, never looked at while tuning. Writes, per part,
``benchmarks/results/audit/<part>/<tag>.png`` (the 24 highest scores, tagged ones starred) and
``benchmarks/results/audit/<part>.json`` (counts, seconds per image, every image's facts).

    python benchmarks/audit/artefact_sheets.py --part holdout
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from dermvlm.datasets import artefacts
from dermvlm.datasets.contact_sheet import contact_sheet
from dermvlm.datasets.image_facts import image_facts
from dermvlm.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def images(part: str) -> list[Path]:
    isic = sorted((SHARED / "isic_cc0" / "images").glob("*.jpg"))
    pad = sorted((SHARED / "pad_ufes_20").glob("images*/*.png"))
    return isic[:60] + pad[:40] if part == "tuning" else isic[60:] + pad[40:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["tuning", "holdout"], default="holdout")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audit")
    args = ap.parse_args()
    files = images(args.part)
    started = time.perf_counter()
    facts = {}
    for f in files:
        found = artefacts.detect(f)
        facts[f.name] = image_facts(f) | {"scores": found.scores, "path": str(f)}
    seconds = (time.perf_counter() - started) / len(files)
    for tag in artefacts.TAGS:
        ranked = sorted((n for n in facts if tag in facts[n]["scores"]), key=lambda n: -facts[n]["scores"][tag])
        contact_sheet([(facts[n]["path"], f"{facts[n]['scores'][tag]:.3g}{'*' if tag in facts[n]['artefacts'] else ''}"
                        f" {n[:10]}") for n in ranked[:24]], args.out / args.part / f"{tag}.png")
    contact_sheet([(facts[n]["path"], f"{facts[n]['skin_tone_ita'] or 0:.0f} {facts[n]['tone_group'] or 'skipped'}")
                   for n in sorted(facts)[:48]], args.out / args.part / "tone.png")
    summary = {"part": args.part, "images": len(files), "seconds_per_image": round(seconds, 4),
               "thresholds": artefacts.THRESHOLDS,
               "tagged": {t: sum(t in v["artefacts"] for v in facts.values()) for t in artefacts.TAGS},
               "tone_groups": dict(Counter(v["tone_group"] or "skipped" for v in facts.values())),
               "per_image": {n: {k: v for k, v in f.items() if k != "path"} for n, f in facts.items()}}
    atomic_write_text(args.out / f"{args.part}.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=1))


if __name__ == "__main__":
    main()
