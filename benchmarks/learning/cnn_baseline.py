"""The in-run CNN baseline of the learning benchmark: torchvision's ResNet-18 from scratch, adapted to small images
(3x3 stride-1 stem, no max-pool), trained on the same recipe rows (``image_label`` train split) with the same
augmentation and the same loss as the vision stage, for the same wall budget, then scored on val and test.

The step count is fixed before training from a short timing of the first steps (``--seconds``, counted in CPU
seconds of this one-threaded process, so a busy machine does not shrink the CNN's share), or given
(``--steps``), and recorded, so a result can be reproduced exactly with ``--steps``. No selection: the last step's
weights are scored.

    python benchmarks/learning/cnn_baseline.py --data runs/learning/full/s0-base/data --seconds 1800 --seed 0 \
        --out runs/learning/full/cnn-s0.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


MEAN_RGB, STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, on 0-255 pixels ×255


def resnet18_small(n_classes: int):
    """ResNet-18 for small inputs: 3x3 stride-1 stem and no max-pool (the usual CIFAR adaptation)."""
    import torch.nn as nn
    from torchvision.models import resnet18

    net = resnet18(num_classes=n_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def load_split(data: Path, split: str, side: int | None = None):
    """Images (uint8 NCHW, resized to ``side`` when given or when sizes differ) and KG labels of a split of the
    recipe's ``image_label`` kind."""
    import numpy as np
    import torch
    from datasets import load_from_disk

    ds = load_from_disk(str(data / "image_label"))[split]
    images = [np.asarray(row["images"][0].convert("RGB")) for row in ds]
    side = side or max(max(i.shape[:2]) for i in images)
    if any(i.shape[:2] != (side, side) for i in images):
        from PIL import Image

        images = [np.asarray(Image.fromarray(i).resize((side, side), Image.BICUBIC)) for i in images]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), list(ds["label"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a built recipe folder with the image_label kind")
    ap.add_argument("--seconds", type=float, default=None,
                    help="budget in CPU seconds (one thread); sets the step count")
    ap.add_argument("--steps", type=int, default=None, help="exact step count (overrides --seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--loss", choices=["logit_adjusted", "balanced", "plain"], default="logit_adjusted")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", type=int, default=None, help="resize images to this side (default: as built)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--save", type=Path, default=None,
                    help="also save the trained network (weights, classes, image side) here, for robustness runs")
    args = ap.parse_args()
    if (args.seconds is None) == (args.steps is None):
        ap.error("give exactly one of --seconds and --steps")

    import torch
    import torch.nn.functional as F
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

    from dermvlm.config import AugmentSpec
    from dermvlm.training.augment import augment

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train_labels = load_split(args.data, "train", args.side)
    classes = sorted(set(y_train_labels))
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[c] for c in y_train_labels])
    counts = torch.bincount(y_train, minlength=len(classes)).float()
    prior = counts / counts.sum()
    net = resnet18_small(len(classes))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    spec = AugmentSpec()
    mean = torch.tensor(MEAN_RGB).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD_RGB).view(1, 3, 1, 1) * 255
    n, bs = len(x_train), args.batch_size

    def batch(step: int):
        epoch, offset = divmod(step * bs, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        idx = [int(perm[(offset + j) % n]) for j in range(bs)]
        imgs = []
        for j, i in enumerate(idx):
            k = step * bs + j
            g = torch.Generator().manual_seed(int(hashlib.sha256(f"{args.seed}:{k}".encode()).hexdigest()[:12], 16))
            imgs.append(augment(x_train[i], spec, g))
        return (torch.stack(imgs).float() - mean) / std, y_train[idx]

    def loss_fn(logits, y):
        if args.loss == "logit_adjusted":
            return F.cross_entropy(logits + prior.log(), y, label_smoothing=args.label_smoothing)
        weight = (1 / prior) / (1 / prior).mean() if args.loss == "balanced" else None
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=args.label_smoothing)

    def train_step(net, opt, step: int, total: int) -> float:
        warm = min(1.0, (step + 1) / 50)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch(step)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    started, cpu_started = time.perf_counter(), time.process_time()
    if args.steps is None:  # time a few steps of a throw-away network, then fix the count
        timing_net = resnet18_small(len(classes))
        timing_opt = torch.optim.AdamW(timing_net.parameters(), lr=args.lr)
        t = time.process_time()
        for s in range(10):
            train_step(timing_net, timing_opt, s, 10_000)
        per_step = (time.process_time() - t) / 10
        total = max(1, int((args.seconds - (time.process_time() - cpu_started)) / per_step))
    else:
        total = args.steps
    losses = []
    for step in range(total):
        losses.append(train_step(net, opt, step, total))
    train_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    net.eval()
    result = {"model": "torchvision resnet18, 3x3 stride-1 stem, no max-pool, from scratch",
              "parameters": sum(p.numel() for p in net.parameters()), "seed": args.seed, "steps": total,
              "batch_size": bs, "epochs": round(total * bs / n, 2), "loss": args.loss, "lr": args.lr,
              "train_seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "budget_seconds": args.seconds, "classes": classes,
              "loss_curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4)
                             for i in range(0, len(losses), 50)]}
    for split in ("val", "test"):
        x, labels = load_split(args.data, split, args.side)
        keep = [i for i, c in enumerate(labels) if c in index]
        y = [index[labels[i]] for i in keep]
        preds = []
        with torch.no_grad():
            for k in range(0, len(keep), 256):
                xb = (x[keep[k:k + 256]].float() - mean) / std
                preds += net(xb).argmax(-1).tolist()
        recall = recall_score(y, preds, average=None, labels=list(range(len(classes))), zero_division=0)
        result[split] = {"n": len(y), "accuracy": round(float(accuracy_score(y, preds)), 4),
                         "balanced_accuracy": round(float(balanced_accuracy_score(y, preds)), 4),
                         "macro_f1": round(float(f1_score(y, preds, average="macro", zero_division=0)), 4),
                         "per_class_recall": {c: round(float(r), 4) for c, r in zip(classes, recall, strict=True)},
                         "predictions": preds, "gold": y}
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "classes": classes, "side": int(x_train.shape[-1]),
                    "seed": args.seed, "steps": total}, args.save.with_suffix(".tmp"))
        args.save.with_suffix(".tmp").replace(args.save)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    tmp.replace(args.out)
    print(f"cnn seed {args.seed}: {total} steps ({result['epochs']} epochs) in {train_seconds:.0f} s; "
          f"val acc {result['val']['accuracy']:.3f} bal {result['val']['balanced_accuracy']:.3f}; "
          f"test acc {result['test']['accuracy']:.3f} bal {result['test']['balanced_accuracy']:.3f}")


if __name__ == "__main__":
    main()
