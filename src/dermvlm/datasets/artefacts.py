"""Cheap detectors for the artefacts that confound skin-lesion classifiers ("Skin Deep Unlearning", Bevan &
Atapour-Abarghouei 2022): dark corners / vignetting, ink or surgical marker, ruler, dense hair, and dermoscopy gel
bubbles. Each gives a score and a tag above its threshold; images too small for a detector are skipped by it,
with the reason. Scores are for ranking and strata, not ground truth: check a tag's precision on its contact sheet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermvlm.datasets.skin_tone import MIN_SIDE, lab, rgb_array

TAGS = ("dark_corners", "ink", "ruler", "hair", "gel_bubbles")
THRESHOLDS = {"dark_corners": 0.5, "ink": 0.1, "ruler": 25.0, "hair": 0.04, "gel_bubbles": 5.0}
DETAIL_MIN_SIDE = 64  # ink, ruler, hair and bubbles need this many pixels a side
JPEG_PERIODS = (8.0, 4.0, 16.0, 8 / 3, 16 / 3)  # JPEG block edges, also after a 2x downscale


@dataclass(frozen=True)
class Artefacts:
    """Scores per detector, the tags over threshold, and detectors skipped with why."""

    scores: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def dark_corners(lab_image: np.ndarray) -> float:
    """Share of the four corner patches (1/8 of a side) that are dark (L* < 25) and under half the centre's L*."""
    h, w = lab_image.shape[:2]
    k = max(1, min(h, w) // 8)
    light = lab_image[..., 0]
    centre = float(np.median(light[h // 4: h - h // 4, w // 4: w - w // 4]))
    corners = [light[:k, :k], light[:k, -k:], light[-k:, :k], light[-k:, -k:]]
    return sum(float(np.median(c)) < min(25.0, centre / 2) for c in corners) / 4


def _outer(shape: tuple[int, ...], inner: float) -> np.ndarray:
    """Pixels outside the central disc of radius ``inner`` x the shorter side (where markings and rulers lie)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) > (inner * min(h, w)) ** 2


def ink(rgb: np.ndarray) -> float:
    """Marker strokes: thin, long blue/violet lines. At 256 px a side, pixels 12 b* bluer than their neighbourhood's
    median (so a blue-tinted dermoscopy field is not ink), with b* under 5 and mid lightness, outside the dark
    vignette of a dermoscope (its rim has a blue fringe); the score sums the length (over the side) of connected
    strokes at least 1/10 of a side long and nowhere wider than 1/20 of a side (a purple lesion is a blob,
    not a stroke)."""
    import cv2

    rgb = _resized(rgb, 256)
    lab_image = lab(rgb)
    light, yellow = lab_image[..., 0], lab_image[..., 2]
    side = min(light.shape)
    k = max(15, side // 8) | 1
    local = cv2.medianBlur(np.clip(yellow + 128, 0, 255).astype(np.uint8), k).astype(np.float32) - 128
    mask = ((yellow - local) < -12) & (light > 20) & (light < 85) & (yellow < 5) & ~_vignette(light)
    labels, stats = _components(mask)
    if not len(stats):
        return 0.0
    from scipy import ndimage

    half_width = ndimage.maximum(cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3), labels,
                                 np.arange(1, len(stats) + 1))
    length = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    stroke = (length >= side / 10) & (2 * np.asarray(half_width) <= side / 20)
    return float(length[stroke].sum() / side)


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    """The image with its longer side at most ``side`` px (area-averaged)."""
    import cv2

    scale = side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def _vignette(light: np.ndarray) -> np.ndarray:
    """Dark (L* < 25) regions over 1% of the image that touch its border (a dermoscope's rim, black bars), widened
    by 1/20 of a side."""
    import cv2

    labels, stats = _components(light < 25)
    h, w = light.shape
    x, y, bw, bh = (stats[:, c] for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    edge = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    keep = np.flatnonzero((stats[:, cv2.CC_STAT_AREA] > 0.01 * h * w) & edge) + 1
    if not keep.size:
        return np.zeros_like(light, dtype=bool)
    k = max(3, min(h, w) // 20) | 1
    return cv2.dilate(np.isin(labels, keep).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[1:]


def hair(rgb: np.ndarray) -> float:
    """Share of the image in thin, long dark strands: DullRazor's black-hat (closing minus image, kernel 1/25 of a
    side), kept only for components longer than 1/6 of a side that fill under a quarter of their box."""
    import cv2

    gray = _gray(rgb)
    side = min(gray.shape)
    k = max(5, side // 25) | 1
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    labels, stats = _components(blackhat > 25)
    long = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= side / 6
    thin = stats[:, cv2.CC_STAT_AREA] < 0.25 * stats[:, cv2.CC_STAT_WIDTH] * stats[:, cv2.CC_STAT_HEIGHT]
    keep = np.flatnonzero(long & thin) + 1
    return float(np.isin(labels, keep).mean()) if keep.size else 0.0


def ruler(rgb: np.ndarray) -> float:
    """Graduated scales: the strongest periodic run of ticks along a row or column of the outer quarter of the
    image (rulers lie at the edges), as the FFT peak of the detrended profile at periods of 3-40 px over the
    spectrum's median. JPEG block periods (8 px, and 4 px after a 2x downscale) are left out."""
    import cv2

    gray = _gray(rgb).astype(np.float32)
    h, w = gray.shape
    best = 0.0
    for profiles in (gray[: h // 4], gray[h - h // 4:], gray[:, : w // 4].T, gray[:, w - w // 4:].T):
        n = profiles.shape[1]
        trend = cv2.blur(profiles, (max(3, n // 20) | 1, 1))
        spectrum = np.abs(np.fft.rfft(profiles - trend, axis=1))
        periods = n / np.maximum(np.arange(spectrum.shape[1]), 1)
        blocks = np.any([np.abs(periods - b) < 0.1 * b for b in JPEG_PERIODS], axis=0)
        band = (periods >= 3) & (periods <= 40) & ~blocks
        ratio = spectrum[:, band].max(axis=1) / (np.median(spectrum[:, 1:], axis=1) + 1e-3)
        strong = (profiles - trend).std(axis=1) > 20  # printed ticks are high-contrast, skin texture is not
        if strong.any():
            best = max(best, float(ratio[strong].max()))
    return best


def gel_bubbles(rgb: np.ndarray) -> float:
    """Air bubbles in immersion gel: round (box filled over half, aspect under 2), near-white, low-saturation
    blobs between 1/3000 and 1/100 of the image's area; their count."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    _, stats = _components((hsv[..., 2] > 235) & (hsv[..., 1] < 40))
    w, h, area = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT], stats[:, cv2.CC_STAT_AREA]
    total = rgb.shape[0] * rgb.shape[1]
    round_ = (area > 0.5 * w * h) & (np.maximum(w, h) < 2 * np.minimum(w, h))
    return float((round_ & (area >= max(4, total / 3000)) & (area <= total / 100)).sum())


def detect(image: Image.Image | str | Path) -> Artefacts:
    """Every detector's score on one image and the tags over threshold."""
    try:
        rgb = rgb_array(image, max_side=512)
    except (OSError, ValueError) as e:
        return Artefacts(skipped={t: f"unreadable image ({e})" for t in TAGS})
    side = min(rgb.shape[:2])
    if side < MIN_SIDE:
        return Artefacts(skipped={t: f"too small ({rgb.shape[1]}x{rgb.shape[0]} px)" for t in TAGS})
    lab_image = lab(rgb)
    scores = {"dark_corners": dark_corners(lab_image)}
    skipped = {}
    for name, fn in (("ink", ink), ("ruler", ruler), ("hair", hair), ("gel_bubbles", gel_bubbles)):
        if side < DETAIL_MIN_SIDE:
            skipped[name] = f"image side {side} px < {DETAIL_MIN_SIDE}"
        else:
            scores[name] = fn(rgb)
    scores = {k: round(v, 4) for k, v in scores.items()}
    tags = [t for t in TAGS if t in scores and scores[t] >= THRESHOLDS[t]]
    return Artefacts(scores, tags, skipped)
