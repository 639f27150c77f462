"""Out-of-sample class probabilities from a small CNN, cross-validated: the label-error classifier of
``dermvlm data audit --classifier cnn``.

Each fold trains a fresh network (three conv blocks, global pooling, a linear head: about 100k parameters) on the
other folds' images at ``size`` pixels, with the augmentation that suits skin images (flips and 90° rotations, on
the fly and seeded), then predicts its own fold averaged over the eight flip/rotation views. Networks fit clean
patterns before they memorise noisy labels, so a few epochs are what the ranking wants.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 32
EPOCHS = 8
MIN_STEPS = 60  # optimiser steps per fold at least, so that a small dataset's network learns something


@dataclass
class ProbeResult:
    """Out-of-sample probabilities (images x classes, rows in input order), the classes, and what it cost."""

    proba: np.ndarray
    classes: list[str]
    fold_accuracy: list[float]
    seconds: float


def image_tensor(images: list[Image.Image], size: int = SIZE) -> np.ndarray:
    """uint8 array (n, 3, size, size) of the images in RGB, squashed to a square (no crop: a lesion off-centre
    stays in view)."""
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    return out


def _network(classes: int):
    import torch.nn as nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, classes))


def _views(x):
    """The eight flip/rotation views of a batch (dihedral group of the square)."""
    import torch

    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        yield r
        yield torch.flip(r, dims=(3,))


def _augment(x, gen):
    """A random dihedral view per image (seeded by ``gen``)."""
    import torch

    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    out = x.clone()
    for r in range(4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    out[flip] = torch.flip(out[flip], dims=(3,))
    return out


def cross_validated_proba(images: list[Image.Image], labels: list[str], folds: int = 5, seed: int = 0,
                          size: int = SIZE, epochs: int = EPOCHS, batch_size: int = 128,
                          progress: Callable[[int, int], None] | None = None) -> ProbeResult:
    """Stratified ``folds``-fold out-of-sample probabilities of every image's class from a small CNN; classes
    with fewer images than folds are scored with the folds they allow. Deterministic for a seed on one machine."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab in labels])
    counts = np.bincount(y, minlength=len(classes))
    k = max(2, min(folds, int(counts.min())))
    pixels = torch.from_numpy(image_tensor(images, size))
    mean = pixels.float().mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1.0)
    proba = np.zeros((len(labels), len(classes)), dtype=np.float64)
    accuracy = []
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    for fold, (train, held) in enumerate(splits):
        torch.manual_seed(seed * 1000 + fold)
        gen = torch.Generator().manual_seed(seed * 1000 + fold)
        net = _network(len(classes))
        steps = max(MIN_STEPS, epochs * -(-len(train) // batch_size))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        # class-balanced loss weights, so that rare classes are learnt and their images are not all "errors"
        weight = torch.tensor(len(train) / (len(classes) * np.maximum(np.bincount(y[train], minlength=len(classes)),
                                                                         1)), dtype=torch.float32)
        loss_fn = torch.nn.CrossEntropyLoss(weight=weight.sqrt(), label_smoothing=0.05)
        yt = torch.from_numpy(y)
        net.train()
        done = 0
        while done < steps:  # shuffled epochs until the step budget is spent
            order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                if len(idx) < 2 or done >= steps:
                    continue
                x = _augment((pixels[idx].float() - mean) / std, gen)
                loss = loss_fn(net(x), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
        net.eval()
        with torch.no_grad():
            for b in range(0, len(held), 512):
                idx = torch.from_numpy(held[b:b + 512])
                x = (pixels[idx].float() - mean) / std
                p = torch.stack([torch.softmax(net(v), dim=1) for v in _views(x)]).mean(dim=0)
                proba[held[b:b + 512]] = p.double().numpy()
        accuracy.append(float((proba[held].argmax(axis=1) == y[held]).mean()))
        if progress:
            progress(fold + 1, k)
    return ProbeResult(proba, classes, accuracy, time.perf_counter() - started)
