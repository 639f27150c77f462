"""Robustness and fairness of the learning benchmark's CNN baseline, side by side with the micro VLM's.

Trains (or reuses) the CNN exactly as the learning benchmark does for the full regime (``arms.CNN_EPOCHS``), then
asks it about the same items as ``benchmarks/audit/dermamnist_robustness.yaml`` (the first 300
DermaMNIST test images, clean and under the same corruptions and severities, same seeds) and scores its answers
with the evaluation's own ``score_predictions`` (so the fairness strata — ITA tone group, artefact tags — and the
robustness summary are computed exactly as for a served VLM). Writes ``benchmarks/results/robustness_cnn/``
(``robustness.{json,md,png}``, ``clean/metrics.json`` and ``clean/report.md``).

    python benchmarks/audit/cnn_robustness.py --data runs/learning/full/s0-base/data
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "learning"))
SUITE = ROOT / "benchmarks" / "audit" / "dermamnist_robustness.yaml"


def train(data: Path, work: Path, seed: int) -> Path:
    """The CNN of the learning benchmark's full regime at ``seed``, saved once."""
    from arms import CNN_EPOCHS

    weights = work / f"cnn-s{seed}.pt"
    if not weights.exists():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "learning" / "cnn_baseline.py"), "--data", str(data),
               "--seed", str(seed), "--epochs", str(CNN_EPOCHS["full"]), "--out", str(work / f"cnn-s{seed}.json"),
               "--save", str(weights)]
        subprocess.check_call(cmd, cwd=ROOT)
    return weights


def predict(weights: Path, images: list[bytes]) -> list[str]:
    """The CNN's class for each image (decoded, RGB, resized to its training side, normalised as in training)."""
    import numpy as np
    import torch
    from cnn_baseline import MEAN_RGB, STD_RGB, resnet18_small
    from PIL import Image

    saved = torch.load(weights, weights_only=False)
    net = resnet18_small(len(saved["classes"]), saved.get("stem_stride", 1))
    net.load_state_dict(saved["state_dict"])
    net.eval()
    side = saved["side"]
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((side, side), Image.BICUBIC))
              for b in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(MEAN_RGB).view(1, 3, 1, 1) * 255) / (torch.tensor(STD_RGB).view(1, 3, 1, 1) * 255)
    with torch.no_grad():
        out = torch.cat([net(x[k:k + 256]).argmax(-1) for k in range(0, len(x), 256)])
    return [saved["classes"][i] for i in out.tolist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the full regime's built recipe (image_label kind)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "robustness_cnn")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness_cnn")
    args = ap.parse_args()

    import torch

    from dermvlm.config import SuiteConfig, load_config
    from dermvlm.evaluation.items import build_items, corrupted
    from dermvlm.evaluation.report import write_report
    from dermvlm.evaluation.robustness import CLEAN, markdown, plot, runs, summarise
    from dermvlm.evaluation.score import score_predictions
    from dermvlm.io import atomic_write_text
    from dermvlm.knowledge import load_graph

    torch.set_num_threads(1)
    kg = load_graph()
    weights = train(args.data, args.work, args.seed)
    suite = load_config(SUITE, SuiteConfig)
    spec = suite.robustness
    items = build_items(suite.model_copy(update={"limit": None, "corruption": None}), args.work / "items",
                        base=SUITE.parent)[: spec.limit]
    model = f"ResNet-18 CNN baseline (full regime, seed {args.seed})"
    results = {}
    for name, corruption in runs(spec):
        rows = items if corruption is None else corrupted(items, corruption.name, corruption.severity, suite.seed)
        answers = predict(weights, [r["image"] for r in rows])
        preds = [{k: v for k, v in r.items() if k != "image"} | {"response": f"<answer>{kg.name(a)}</answer>",
                                                                   "latency_s": None, "completion_tokens": 0}
                 for r, a in zip(rows, answers, strict=True)]
        metrics = score_predictions(preds, kg, suite.bootstrap, suite.seed)
        metrics["errors"] = 0
        results[name] = {"suite": suite.name, "description": suite.description, "model": model,
                         "endpoint": "(in-process CNN, no server)", "n_items": len(rows), "errors": 0,
                         "metrics": metrics}
        h = metrics["types"]["open"]
        print(f"{name:22} acc {h['accuracy']:.3f} bal {h['balanced_accuracy']:.3f}")
    out = args.out
    (out / CLEAN).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CLEAN / "metrics.json", json.dumps(results[CLEAN], indent=2, default=str) + "\n")
    write_report(results[CLEAN], out / CLEAN)
    summary = summarise(results, spec)
    atomic_write_text(out / "robustness.json", json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "robustness.png")
    atomic_write_text(out / "robustness.md", markdown(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
