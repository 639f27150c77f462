"""Choose the micro model's vision geometry by measurement: patch size / input size / visual tokens per image
against the vision stage's validation balanced accuracy and its seconds, on DermaMNIST's train split.

Each geometry builds the micro model with that patch (the 28 px images are resized to the multiple of patch x 2
that the processor's pixel bounds give) and runs the same vision stage (same epochs, seed, loss, augmentation);
the result is the stage's linear probe and head on val (never test: the choice is made on val). Runs are the
pipeline's, so a killed sweep resumes.

    python benchmarks/learning/geometry_sweep.py            # all geometries, two at a time
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ROOT, base_config
from run import run_jobs

OUT = ROOT / "runs" / "learning" / "geometry"
# name → (patch, side): tokens after the 2x2 merge = (side / patch / 2)^2
GEOMETRIES = {"p7-28px": (7, 28), "p5-30px": (5, 30), "p4-32px": (4, 32), "p14-112px": (14, 112)}


def geometry_config(name: str, patch: int, side: int, epochs: float, seed: int, out_root: Path) -> dict:
    cfg = base_config("full")
    cfg["name"] = f"geometry-{name}"
    cfg["seed"] = seed
    cfg["output_dir"] = str(out_root)
    cfg["model"]["nano"].update(seed=seed, patch_size=patch, min_pixels=side * side, max_pixels=side * side)
    vision = next(s for s in cfg["stages"] if s["kind"] == "vision")
    vision["trl"]["num_train_epochs"] = epochs
    vision["trl"].pop("max_steps", None)
    cfg["stages"] = [vision]
    cfg["evaluate"] = []
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometries", nargs="+", default=list(GEOMETRIES))
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--collect-only", action="store_true", help="tabulate finished runs, train nothing")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "geometry_sweep.json")
    args = ap.parse_args()
    out_root = args.out.resolve()
    jobs = [(f"geometry-{g}", geometry_config(g, *GEOMETRIES[g], args.epochs, args.seed, out_root), None)
            for g in args.geometries]
    if not args.collect_only:
        run_jobs(jobs, out_root, args.workers)
    rows = []
    for g in args.geometries:
        patch, side = GEOMETRIES[g]
        done = out_root / f"geometry-{g}" / "vision" / "done.json"
        if not done.exists():
            rows.append({"geometry": g, "status": "missing"})
            continue
        info = json.loads(done.read_text())
        probe = info.get("probe", {})
        rows.append({"geometry": g, "patch_size": patch, "input_side": side, "patches": (side // patch) ** 2,
                     "visual_tokens": (side // patch // 2) ** 2, "epochs": args.epochs, "seconds": info["seconds"],
                     "steps": info["steps"], "val_probe": probe.get("val", {}).get("probe"),
                     "val_head": probe.get("val", {}).get("head"), "last_loss": info.get("last_loss")})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    for r in rows:
        if r.get("val_probe"):
            print(f"{r['geometry']:<10} tokens {r['visual_tokens']:>3}  {r['seconds']:>7.0f} s  val probe bal.acc "
                  f"{r['val_probe']['balanced_accuracy']:.3f}  head bal.acc {r['val_head']['balanced_accuracy']:.3f}")


if __name__ == "__main__":
    main()
