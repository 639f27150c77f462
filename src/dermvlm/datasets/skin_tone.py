"""Skin tone from the image when a dataset gives no Fitzpatrick type: the individual typology angle (ITA) of the
non-lesion skin, in CIELAB.

ITA = atan((L* - 50) / b*) in degrees (Chardon et al. 1991), taken from the median L* and b* of pixels that are
neither lesion (darker than an Otsu split of L*), nor hair or vignette (very dark), nor glare (near white). Six
tone groups after Del Bino & Bernerd (2013) (very light > 55° ≥ light > 41° ≥ intermediate > 28° ≥ tan > 10° ≥
brown > -30° ≥ dark) and a Fitzpatrick-like type from the cut-points 55/41/28/19/10 used to map ITA to
Fitzpatrick types in the Fitzpatrick 17k study (Groh et al. 2021). An estimate, not a label: lighting, white
balance and the camera shift it (see the benchmark's agreement with PAD-UFES-20's labelled types).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import dermvlm.datasets.photo_formats  # noqa: F401  (HEIC/HEIF files open)

TONE_GROUPS = [(55.0, "very light"), (41.0, "light"), (28.0, "intermediate"), (10.0, "tan"), (-30.0, "brown")]
DARKEST_GROUP = "dark"
FITZPATRICK_CUTS = [55.0, 41.0, 28.0, 19.0, 10.0]  # type I above the first ... type VI at or below the last
MIN_SIDE = 8
MAX_SIDE = 256
MIN_SKIN_FRACTION = 0.02
MIN_YELLOW = 2.0  # skin has b* > 0; at b* near 0 the angle says more about the light than the skin


@dataclass(frozen=True)
class ToneEstimate:
    """An ITA estimate (``ita`` None with ``skipped`` saying why when no estimate could be made)."""

    ita: float | None
    tone_group: str = ""
    fitzpatrick_like: int | None = None
    skin_fraction: float = 0.0
    skipped: str = ""


def tone_group(ita: float) -> str:
    """Del Bino & Bernerd's six groups."""
    for cut, name in TONE_GROUPS:
        if ita > cut:
            return name
    return DARKEST_GROUP


def fitzpatrick_like(ita: float) -> int:
    """A Fitzpatrick-like type 1-6 from ITA."""
    return 1 + sum(ita <= cut for cut in FITZPATRICK_CUTS)


def band(fitzpatrick: int | None) -> str:
    """The three bands reports use for Fitzpatrick types (I-II, III-IV, V-VI)."""
    return "" if not fitzpatrick else ("I-II", "III-IV", "V-VI")[(fitzpatrick - 1) // 2]


def rgb_array(image: Image.Image | str | Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """Any PIL mode as an RGB uint8 array, downscaled to ``max_side`` (alpha composited on white)."""
    if isinstance(image, Image.Image):
        im = image
    else:
        im = Image.open(image)
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale (a no-op for other formats)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        im = Image.fromarray((arr / top * 255).astype(np.uint8))
    im = im.convert("RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an sRGB uint8 array: L* in 0-100, a*, b* as floats."""
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def skin_mask(lab_image: np.ndarray) -> np.ndarray:
    """Pixels taken as non-lesion skin: above an Otsu split of L* (lesions, hair and vignette are darker),
    below glare (L* 97), and not saturated blue/green (b* > -5, a* > -10: ink, rulers, background)."""
    import cv2

    light = lab_image[..., 0]
    l8 = np.clip(light * 2.55, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(l8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    lighter = l8 > otsu if np.ptp(light) >= 10 else np.ones_like(l8, bool)  # no lesion contrast: all of it
    return (lighter & (light > 15) & (light < 97) & (lab_image[..., 2] > -5)
            & (lab_image[..., 1] > -10))


def estimate(image: Image.Image | str | Path) -> ToneEstimate:
    """The ITA of an image's non-lesion skin, its tone group and Fitzpatrick-like type; a skip with the reason for
    images too small, blank, or without skin-like pixels."""
    try:
        rgb = rgb_array(image)
    except (OSError, ValueError) as e:
        return ToneEstimate(None, skipped=f"unreadable image ({e})")
    if min(rgb.shape[:2]) < MIN_SIDE:
        return ToneEstimate(None, skipped=f"too small ({rgb.shape[1]}x{rgb.shape[0]} px; needs {MIN_SIDE})")
    if float(rgb.reshape(-1, 3).std(axis=0).max()) < 2:
        return ToneEstimate(None, skipped="blank image (no contrast)")
    lab_image = lab(rgb)
    mask = skin_mask(lab_image)
    fraction = float(mask.mean())
    if fraction < MIN_SKIN_FRACTION:
        return ToneEstimate(None, skin_fraction=round(fraction, 4), skipped="no skin-like pixels")
    light = float(np.median(lab_image[..., 0][mask]))
    yellow = float(np.median(lab_image[..., 2][mask]))
    if yellow < MIN_YELLOW:
        return ToneEstimate(None, skin_fraction=round(fraction, 4),
                            skipped=f"white balance too blue for ITA (median b* {yellow:.1f} < {MIN_YELLOW})")
    ita = math.degrees(math.atan((light - 50.0) / yellow))
    return ToneEstimate(round(ita, 2), tone_group(ita), fitzpatrick_like(ita), round(fraction, 4))
