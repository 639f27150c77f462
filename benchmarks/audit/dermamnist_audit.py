"""``dermvlm data audit`` of DermaMNIST as it ships (``data_recipes/dermamnist.yaml``, all 10,015 images, no planted
faults), with the default ``features`` classifier. The report's text parts are kept in
``benchmarks/results/audit_dermamnist/``: ``audit.md``, ``exclude.yaml`` and ``summary.json`` (``audit.json`` without
its per-image rows and exclusions, plus the wall time). The pictures (``audit.html``, contact sheets) stay in
``runs/audit_dermamnist/``: DermaMNIST is CC BY-NC, so its images are never copied into the project.

    python benchmarks/audit/dermamnist_audit.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dermvlm.audit import audit
from dermvlm.config import RecipeConfig, load_config
from dermvlm.io import OutputError, atomic_write_text, check_output

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "data_recipes" / "dermamnist.yaml"
WORK = ROOT / "runs" / "audit_dermamnist"
OUT = ROOT / "benchmarks" / "results" / "audit_dermamnist"


def main() -> None:
    try:
        check_output(WORK, "data audit")  # replaces only an audit it wrote itself
    except OutputError as err:
        sys.exit(f"error: {err}")
    started = time.perf_counter()
    result = audit(load_config(RECIPE, RecipeConfig), WORK, base=RECIPE.parent)
    seconds = round(time.perf_counter() - started, 1)
    summary = {k: v for k, v in result.items() if k not in ("per_image", "exclude")}  # exclude: in exclude.yaml
    summary |= {"exclude_entries": len(result["exclude"]), "audit_seconds": seconds}
    summary["duplicates"] = {**result["duplicates"], "pairs": result["duplicates"]["pairs"][:50]}
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("audit.md", "exclude.yaml"):
        atomic_write_text(OUT / name, (WORK / name).read_text())
    atomic_write_text(OUT / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"{result['images']} images in {seconds} s: {result['duplicates']['cross_split_pairs']} cross-split "
          f"duplicate pairs, {len(result['exclude'])} proposed exclusions, {len(result['held_for_review'])} held "
          f"for review; {OUT}")


if __name__ == "__main__":
    main()
