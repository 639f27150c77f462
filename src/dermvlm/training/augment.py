"""Seeded on-the-fly augmentation for skin images: flips, 90° rotations, random resized crops, small colour jitter.

Every draw comes from a ``torch.Generator`` the caller seeds per sample, so an augmented sample is a function of
(seed, sample number): a resumed run sees exactly the images an uninterrupted one would.
"""

from __future__ import annotations

import math

from dermvlm.config import AugmentSpec


def _uniform(g, lo: float, hi: float) -> float:
    import torch

    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def augment(image, spec: AugmentSpec, g):
    """An augmented copy of a ``uint8`` CHW tensor (same size, same dtype)."""
    import torch
    import torchvision.transforms.v2.functional as F

    img = image
    _, h, w = img.shape
    if spec.flips:
        if float(torch.rand(1, generator=g)) < 0.5:
            img = img.flip(-1)
        if float(torch.rand(1, generator=g)) < 0.5:
            img = img.flip(-2)
    if spec.rotate90 and h == w:
        img = torch.rot90(img, int(torch.randint(4, (1,), generator=g)), (1, 2))
    lo, hi = spec.crop_scale
    if lo < 1.0:
        scale = _uniform(g, lo, hi)
        ch, cw = max(1, round(h * math.sqrt(scale))), max(1, round(w * math.sqrt(scale)))
        top = int(torch.randint(h - ch + 1, (1,), generator=g))
        left = int(torch.randint(w - cw + 1, (1,), generator=g))
        img = F.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
    if spec.brightness:
        img = F.adjust_brightness(img, _uniform(g, 1 - spec.brightness, 1 + spec.brightness))
    if spec.contrast:
        img = F.adjust_contrast(img, _uniform(g, 1 - spec.contrast, 1 + spec.contrast))
    if spec.saturation:
        img = F.adjust_saturation(img, _uniform(g, 1 - spec.saturation, 1 + spec.saturation))
    if spec.hue:
        img = F.adjust_hue(img, _uniform(g, -spec.hue, spec.hue))
    return img.contiguous()
