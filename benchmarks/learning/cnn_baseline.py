"""The learning benchmark's CNN anchor: torchvision's ResNet-18 from scratch on the same recipe rows (``image_label``
train split) and augmentation as the vision stage, trained with plain cross-entropy (no logit adjustment, no label
smoothing: the balance is set afterwards, by the same prior-corrected decode the VLM gets), then scored on val and
test at the same operating points.

- **Stem**: a 3x3 stride-2 convolution and no max-pool, so the 28 px image is 14x14 in the first stage (a quarter of
  the stride-1 stem's cost): at the VLM arm's compute it trains for tens of epochs.
- **Fixed work**: ``--epochs`` (per regime in ``arms.py``) sets the step count, the same on every seed, recorded
  with the CPU seconds it took; nothing is timed to decide how long to train.
- **Selection on val**: the weights are scored on val every epoch (at most 60 times a run); the checkpoint with the
  best val macro AUC (threshold-free, so it does not pick an operating point) is the one scored on test, and τ of the
  prior-corrected decodes is fitted on its val scores (``evaluation/operating_point.py``), never on test.
- **Unlabelled images** (``--unlabelled DATA --ssl-epochs E``, the low-resource regime's ``cnn_ssl``): first SimCLR
  (the VLM's ``base_ssl`` objective and augmentation, ``training/ssl_vision.py``) on another recipe's train images
  that this train split lacks, labels dropped, then the supervised training above from those weights.
- **Output**: per split the items' image keys (as the VLM's records, so the two pair item by item), gold and
  predicted classes, class scores (log-softmax), AUC and the metrics of each decode.

    python benchmarks/learning/cnn_baseline.py --data runs/learning/full/s0-base/data --epochs 40 --seed 0 \
        --out runs/learning/full/cnn-s0.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

MEAN_RGB, STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, on 0-255 pixels ×255


def resnet18_small(n_classes: int, stem_stride: int = 2):
    """ResNet-18 for small inputs: a 3x3 stem of ``stem_stride`` and no max-pool."""
    import torch.nn as nn
    from torchvision.models import resnet18

    net = resnet18(num_classes=n_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stem_stride, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def load_split(data: Path, split: str, side: int | None = None):
    """Images (uint8 NCHW, resized to ``side`` when given or when sizes differ), KG labels and image keys (sha256 of
    the stored bytes, ``records.image_key``) of a split of the recipe's ``image_label`` kind."""
    import io

    import numpy as np
    import torch
    from datasets import Image as HFImage
    from datasets import List, load_from_disk
    from PIL import Image

    ds = load_from_disk(str(data / "image_label"))[split].cast_column("images", List(HFImage(decode=False)))
    raw = [row["images"][0]["bytes"] for row in ds]
    keys = [hashlib.sha256(b).hexdigest()[:16] for b in raw]
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in raw]
    side = side or max(max(i.shape[:2]) for i in images)
    if any(i.shape[:2] != (side, side) for i in images):
        images = [np.asarray(Image.fromarray(i).resize((side, side), Image.BICUBIC)) for i in images]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), list(ds["label"]), keys


def split_result(keys: list[str], labels: list[str], log_probs, classes: list[str], op=None) -> dict:
    """One split's items and the metrics of each decode (as the VLM's records hold them)."""
    from dermvlm.evaluation.operating_point import closed_set_metrics

    keep = [i for i, c in enumerate(labels) if c in classes]
    gold = [labels[i] for i in keep]
    scores = [dict(zip(classes, (float(v) for v in log_probs[i]), strict=True)) for i in keep]
    pred = [classes[int(log_probs[i].argmax())] for i in keep]
    metrics = closed_set_metrics(gold, pred, scores, classes, op, bootstrap=0)
    return {"n": len(keep), "ids": [keys[i] for i in keep], "gold": gold, "pred": pred, "classes": classes,
            "scores": [[round(float(v), 4) for v in log_probs[i]] for i in keep], "auc": metrics["auc"],
            "decodes": {k: {m: v[m] for m in ("accuracy", "balanced_accuracy", "macro_f1")} | (
                {"tau": v["tau"]} if "tau" in v else {}) for k, v in metrics["decodes"].items()}}


def simclr(net, x_train, train_keys: list[str], args, mean, std) -> dict:
    """SimCLR pre-training of ``net`` on the ``--unlabelled`` recipe's train images this train split lacks (labels
    never read), two augmented views per image, NT-Xent on a projection of the pooled features; returns its facts."""
    import time

    import torch
    from torch import nn

    from dermvlm.config.stages import SelfSupervisedSpec
    from dermvlm.training.augment import augment
    from dermvlm.training.ssl_vision import nt_xent

    images, _, keys = load_split(args.unlabelled, "train", x_train.shape[-1])
    have = set(train_keys)
    pool = images[[i for i, k in enumerate(keys) if k not in have]]
    spec = SelfSupervisedSpec()
    fc, net.fc = net.fc, nn.Identity()
    head = nn.Sequential(nn.Linear(fc.in_features, fc.in_features), nn.ReLU(), nn.Linear(fc.in_features, 128))
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=args.lr, weight_decay=args.weight_decay)
    n, bs = len(pool), args.batch_size
    total = max(1, math.ceil(args.ssl_epochs * n / bs))
    started, losses = time.process_time(), []
    for step in range(total):
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = lr
        epoch, offset = divmod(step * bs, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        idx = [int(perm[(offset + j) % n]) for j in range(bs)]
        views = []
        for v in (1, 2):
            for j, i in enumerate(idx):
                key = f"{args.seed}:ssl:{step * bs + j}:{v}"
                g = torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))
                views.append(augment(pool[i], spec.augment, g))
        z = head(net((torch.stack(views).float() - mean) / std))
        loss = nt_xent(z[:bs], z[bs:], spec.temperature)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    net.fc = nn.Linear(fc.in_features, fc.out_features)  # a fresh classifier on the pre-trained features
    return {"images": n, "steps": total, "epochs": round(total * bs / n, 2),
            "cpu_seconds": round(time.process_time() - started, 1),
            "loss_first_last": [round(losses[0], 4), round(sum(losses[-20:]) / len(losses[-20:]), 4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a built recipe folder with the image_label kind")
    ap.add_argument("--epochs", type=float, required=True, help="passes over the train split (fixes the steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--stem-stride", type=int, default=2, choices=[1, 2])
    ap.add_argument("--eval-every", type=int, default=0,
                    help="steps between val scorings (default: one epoch, or 1/60 of the run if longer)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", type=int, default=None, help="resize images to this side (default: as built)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--unlabelled", type=Path, default=None,
                    help="a built recipe whose image_label train images (less this train split's) pre-train the "
                         "network by SimCLR first")
    ap.add_argument("--ssl-epochs", type=float, default=20, help="SimCLR passes over the unlabelled images")
    ap.add_argument("--save", type=Path, default=None,
                    help="also save the selected network (weights, classes, image side) here, for robustness runs")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from dermvlm.config import AugmentSpec
    from dermvlm.evaluation.operating_point import fit, macro_auc, probabilities
    from dermvlm.training.augment import augment

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train_labels, train_keys = load_split(args.data, "train", args.side)
    x_val, val_labels, val_keys = load_split(args.data, "val", args.side)
    classes = sorted(set(y_train_labels))
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[c] for c in y_train_labels])
    net = resnet18_small(len(classes), args.stem_stride)
    spec = AugmentSpec()
    mean = torch.tensor(MEAN_RGB).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD_RGB).view(1, 3, 1, 1) * 255
    ssl_info = simclr(net, x_train, train_keys, args, mean, std) if args.unlabelled else None
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    n, bs = len(x_train), args.batch_size
    total = max(1, math.ceil(args.epochs * n / bs))
    every = args.eval_every or max(math.ceil(n / bs), math.ceil(total / 60))  # each epoch, at most 60 scorings

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

    def log_probs(x):
        net.eval()
        out = []
        with torch.no_grad():
            for k in range(0, len(x), 256):
                out.append(F.log_softmax(net((x[k:k + 256].float() - mean) / std), -1))
        net.train()
        return torch.cat(out).numpy()

    val_gold = [c for c in val_labels if c in index]
    val_rows = [i for i, c in enumerate(val_labels) if c in index]
    started, cpu_started = time.perf_counter(), time.process_time()
    losses, history = [], []
    best: tuple[float, int, dict] | None = None
    for step in range(total):
        warm = min(1.0, (step + 1) / 50)
        lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / total))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch(step)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == total:
            lp = log_probs(x_val)[val_rows]
            auc, _ = macro_auc(val_gold, probabilities(lp), classes)
            history.append([step + 1, round(auc or 0.0, 4)])
            if best is None or (auc or 0.0) > best[0]:
                best = (auc or 0.0, step + 1, copy.deepcopy(net.state_dict()))
    train_seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    assert best is not None
    net.load_state_dict(best[2])
    val_lp = log_probs(x_val)
    op = fit([dict(zip(classes, map(float, val_lp[i]), strict=True)) for i in val_rows], val_gold, classes,
             {"suite": "val split", "split": "val", "model": "cnn"})
    result = {"model": f"torchvision resnet18, 3x3 stride-{args.stem_stride} stem, no max-pool, from scratch; plain "
                       "cross-entropy; the checkpoint with the best val AUC",
              "parameters": sum(p.numel() for p in net.parameters()), "seed": args.seed, "steps": total,
              "selected_step": best[1], "batch_size": bs, "epochs": round(total * bs / n, 2), "lr": args.lr,
              "train_seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
              "classes": classes, "operating_point": op.to_dict(), "val_auc_curve": history, "ssl": ssl_info,
              "loss_curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4)
                             for i in range(0, len(losses), 50)]}
    result["val"] = split_result(val_keys, val_labels, val_lp, classes, op)
    x_test, test_labels, test_keys = load_split(args.data, "test", args.side)
    result["test"] = split_result(test_keys, test_labels, log_probs(x_test), classes, op)
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "classes": classes, "side": int(x_train.shape[-1]),
                    "seed": args.seed, "steps": total, "stem_stride": args.stem_stride},
                   args.save.with_suffix(".tmp"))
        args.save.with_suffix(".tmp").replace(args.save)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    tmp.replace(args.out)
    t, v = result["test"], result["val"]
    plain, fair = t["decodes"]["as_generated"], t["decodes"]["prior_corrected_balanced_accuracy"]
    print(f"cnn seed {args.seed}: {total} steps ({result['epochs']} epochs, selected step {best[1]}) in "
          f"{train_seconds:.0f} s ({cpu_seconds:.0f} CPU s); val AUC {v['auc']:.3f}; test AUC {t['auc']:.3f}, "
          f"argmax acc {plain['accuracy']:.3f} bal {plain['balanced_accuracy']:.3f}, prior-corrected (τ "
          f"{op.tau['balanced_accuracy']:+.2f}) bal {fair['balanced_accuracy']:.3f}")


if __name__ == "__main__":
    main()
