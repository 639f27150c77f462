"""Our MedMNIST-C corruptions (``dermvlm.evaluation.corruptions``) against the benchmark authors' own package
(``medmnistc`` 0.1.0, Apache-2.0) on DermaMNIST test images: both applied to the same 224-px image (MedMNIST-C's
working size; ``corrupt()`` upsamples the 28-px images to it), each corruption of the dermatoscopy registry at the
given severities. Writes ``benchmarks/results/medmnistc_check.json``: per corruption and severity the mean and
largest absolute pixel difference (0-255) between the two, how many images came out identical, each side's
strength (mean absolute change from the clean image), and whether a seed alone fixes one image's corruption.

Where the random draws can be made the same (numpy's legacy ``RandomState`` seeded like medmnistc's global
``np.random``; Python's ``random`` for characters; the same numpy ``Generator`` that medmnistc hands scikit-image
for impulse noise) the pixels are compared one to one; the others are deterministic.

medmnistc is not a dependency of dermvlm (it imports Wand/ImageMagick, torchvision and OpenCV, pins
scikit-image==0.23.2 and medmnist==3.0.1). Run this in a scratch environment that sees the project's packages:

    apt-get install -y libmagickwand-6.q16-6
    python3 -m venv /tmp/mc
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/mc/lib/python3.11/site-packages/zz_project.pth
    /tmp/mc/bin/pip install --no-deps medmnistc==0.1.0 wand==0.7.2 scikit-image==0.23.2 lazy_loader imageio tifffile
    /tmp/mc/bin/python benchmarks/audit/medmnistc_check.py [--n 20] [--severities 1 3 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # the scratch environment does not read the editable install's .pth

from dermvlm.evaluation import corruptions as ours  # noqa: E402
from dermvlm.io import atomic_write_text  # noqa: E402

SAME_DRAWS = {"gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise", "motion_blur", "characters"}


class PythonRandom:
    """Our ``rng.integers``/``rng.choice`` answered from Python's ``random``, as medmnistc's characters draw."""

    def integers(self, low: int, high: int, size: int | None = None):
        if size is None:
            return random.randint(low, high - 1)
        return np.array([random.randint(low, high - 1) for _ in range(size)])

    def choice(self, seq: list, k: int) -> list:
        return [random.choice(seq) for _ in range(k)]


def shim_numpy_fromstring() -> None:
    """medmnistc 0.1.0's motion blur calls ``np.fromstring(bytes, uint8)``, whose binary mode NumPy 2.3 removed
    (ValueError): give its module ``frombuffer`` there, which is what that mode did."""
    import medmnistc.corruptions.filter as mc_filter

    class _NumPy:
        def __getattr__(self, name: str):
            return np.frombuffer if name == "fromstring" else getattr(np, name)

    mc_filter.np = _NumPy()


def theirs_apply(corruptor, name: str, severity: int, image: Image.Image, seed: int) -> np.ndarray:
    from medmnistc.utils.utils import seed_everything

    rng = seed_everything(seed)  # what medmnistc's dataset builder does once per corruption
    if name == "impulse_noise":
        corruptor.rng = rng
    return np.asarray(corruptor.apply(image, severity - 1)).astype(np.uint8)


def ours_apply(name: str, severity: int, image: Image.Image, seed: int) -> np.ndarray:
    fn, params = ours.DERMATOSCOPY[name]
    random.seed(seed)
    rng = (PythonRandom() if name == "characters" else np.random.default_rng(seed) if name == "impulse_noise"
           else np.random.RandomState(seed) if name in SAME_DRAWS else None)
    return np.asarray(fn(np.asarray(image), params[severity - 1], rng)).astype(np.uint8)


def seed_alone_fixes_it(corruptor, name: str, clean: list[Image.Image], work: list[Image.Image], seed: int) -> dict:
    """Image k's corruption at severity 3 alone and after the images before it: ours is keyed by the image, the
    package's follows one global random stream."""
    k = len(clean) - 1
    mine = [np.asarray(ours.corrupt(clean[k], name, 3, seed=seed)) for _ in range(2)]
    for im in clean[:k]:
        ours.corrupt(im, name, 3, seed=seed)
    mine.append(np.asarray(ours.corrupt(clean[k], name, 3, seed=seed)))
    alone = theirs_apply(corruptor, name, 3, work[k], seed)
    theirs_apply(corruptor, name, 3, work[0], seed)  # reseeded, then the images before k in the same stream
    for im in work[1:k]:
        corruptor.apply(im, 2)
    after = np.asarray(corruptor.apply(work[k], 2)).astype(np.uint8)
    return {"ours": bool((mine[0] == mine[1]).all() and (mine[0] == mine[2]).all()),
            "medmnistc": bool((alone == after).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dermamnist" / "images")
    ap.add_argument("--n", type=int, default=20, help="DermaMNIST test images (the first N)")
    ap.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "medmnistc_check.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from importlib.metadata import version

    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    shim_numpy_fromstring()
    registry = CORRUPTIONS_DS["dermamnist"]
    assert tuple(registry) == ours.NAMES, (tuple(registry), ours.NAMES)
    paths = [args.data / f"DermaMNIST_test_{i:05d}.jpg" for i in range(args.n)]
    clean = [Image.open(p).convert("RGB") for p in paths]
    side = ours.WORK_SIDE
    work = [im.resize((side, side), Image.Resampling.BICUBIC) for im in clean]  # as corrupt() works
    rows = []
    for name in ours.NAMES:
        for severity in args.severities:
            diffs, largest, strength, identical = [], 0, {"ours": [], "medmnistc": []}, 0
            for i, im in enumerate(work):
                a = ours_apply(name, severity, im, args.seed + i)
                b = theirs_apply(registry[name], name, severity, im, args.seed + i)
                d = np.abs(a.astype(np.int16) - b.astype(np.int16))
                diffs.append(float(d.mean()))
                largest, identical = max(largest, int(d.max())), identical + int(not d.any())
                x = np.asarray(im).astype(np.int16)
                strength["ours"].append(float(np.abs(a - x).mean()))
                strength["medmnistc"].append(float(np.abs(b - x).mean()))
            rows.append({"corruption": name, "severity": severity, "mean_abs_diff": float(np.mean(diffs)),
                         "max_abs_diff": largest, "identical": identical, "n": len(work),
                         "draws": "same draws" if name in SAME_DRAWS else "deterministic",
                         "strength_ours": float(np.mean(strength["ours"])),
                         "strength_medmnistc": float(np.mean(strength["medmnistc"]))})
            print(json.dumps(rows[-1]), flush=True)
    seeded = {name: seed_alone_fixes_it(registry[name], name, clean, work, args.seed) for name in ours.NAMES}
    packages = {p: version(p) for p in ("medmnistc", "wand", "scikit-image", "numpy", "opencv-python-headless")}
    result = {"images": [p.name for p in paths], "severities": args.severities, "seed": args.seed,
              "packages": packages, "rows": rows, "seed_alone_fixes_one_image": seeded}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
