"""Image corruptions for robustness evaluation: MedMNIST-C's dermatoscopy set (Di Salvo et al. 2024, after
Hendrycks & Dietterich's ImageNet-C), with its five DermaMNIST severities, written with numpy, OpenCV, SciPy and
PIL. Checked against the authors' ``medmnistc`` 0.1.0 (``benchmarks/audit/medmnistc_check.py``): given the same
random draws, 13 of the 15 give the package's pixels exactly, motion blur (ImageMagick's) and zoom blur within one
grey level. The package itself is not used: it needs ImageMagick through Wand, opencv-python (not -headless),
torchvision and pinned scikit-image/medmnist, its motion blur fails on NumPy 2.3, and its random draws come from
one global stream, so an image's corruption depends on the images corrupted before it.

As in MedMNIST-C the corruption is applied at 224 px (the longer side); the result is resized back to the
image's own size and mode, so a model sees what it would see of a corrupted original. Seeded per image: the same
image, corruption, severity and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import string
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance

WORK_SIDE = 224
SEVERITIES = (1, 2, 3, 4, 5)


def _pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    im = Image.fromarray(x).resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(im.resize((w, h), Image.Resampling.BOX))


def _jpeg(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=int(quality))
    return np.asarray(Image.open(buf).convert("RGB"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255.0


def _byte(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _gaussian_noise(x, c, rng):
    return _byte(_unit(x) + rng.normal(size=x.shape, scale=c))


def _speckle_noise(x, c, rng):
    u = _unit(x)
    return _byte(u + u * rng.normal(size=x.shape, scale=c))


def _impulse_noise(x, c, rng):
    """Salt and pepper on a share ``c`` of the values (half each), as scikit-image's ``random_noise('s&p')``."""
    u = _unit(x).copy()
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    u[hit & salt], u[hit & ~salt] = 1.0, 0.0
    return _byte(u)


def _shot_noise(x, c, rng):
    return _byte(rng.poisson(_unit(x) * c) / c)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    import cv2

    r = np.arange(-8, 9) if radius <= 8 else np.arange(-int(radius), int(radius) + 1)
    xx, yy = np.meshgrid(r, r)
    k = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    k /= k.sum()
    return cv2.GaussianBlur(k, (3, 3) if radius <= 8 else (5, 5), sigmaX=alias_blur)


def _defocus_blur(x, c, rng):
    import cv2

    radius, alias = c
    return _byte(cv2.filter2D(_unit(x), -1, _disk(radius, alias)))


def _motion_blur(x, c, rng):
    """ImageMagick's ``MotionBlurImage``: a one-sided line of ``2·radius + 1`` Gaussian-weighted taps (``sigma``)
    at a random angle in ±45°, offsets rounded as ImageMagick rounds them, edge pixels repeated."""
    import cv2

    radius, sigma = c
    width = 2 * int(np.ceil(radius)) + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    angle = np.deg2rad(rng.uniform(-45, 45))
    dx = np.ceil(np.arange(width) * np.cos(angle) - 0.5).astype(int)
    dy = np.ceil(np.arange(width) * np.sin(angle) - 0.5).astype(int)
    kernel = np.zeros((2 * width + 1, 2 * width + 1))
    np.add.at(kernel, (width + dy, width + dx), weights / weights.sum())
    return _byte(cv2.filter2D(_unit(x), -1, kernel, borderType=cv2.BORDER_REPLICATE))


def _zoom_blur(x, c, rng):
    """The mean of the image and its centre zoomed by each factor (``scipy.ndimage.zoom``, linear), trimmed back."""
    from scipy.ndimage import zoom

    u = _unit(x).astype(np.float32)
    h, w = u.shape[:2]
    out = u.copy()
    for z in c:
        ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
        top, left = (h - ch) // 2, (w - cw) // 2
        zoomed = zoom(u[top:top + ch, left:left + cw], (z, z, 1), order=1)
        th, tw = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        out += zoomed[th:th + h, tw:tw + w]
    return _byte(out / (len(c) + 1))


def _brightness(x, c, rng):
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(x)).enhance(c))


def _contrast(x, c, rng):
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(x)).enhance(c))


def _black_corner(x, c, rng):
    """Everything outside a centred circle of ``c`` x the inscribed radius goes black (a dermoscope's field)."""
    import cv2

    h, w = x.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), int(min(w, h) // 2 * c), 255, -1)
    out = x.copy()
    out[mask == 0] = 0
    return out


def _characters(x, c, rng):
    """Up to ``words`` random lower-case strings (3 to ``letters`` long) in random colours (burnt-in annotations),
    drawn in MedMNIST-C's order: length, font scale, letters, position, colour."""
    import cv2

    words, letters, scale = c
    out = np.ascontiguousarray(x.copy())
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, words + 1))):
        k = int(rng.integers(3, letters + 1))
        font_scale = int(rng.integers(14, int(scale * 100) + 1)) / 100
        text = "".join(rng.choice(list(string.ascii_lowercase), k))
        org = (int(rng.integers(10, max(11, w - 8 * k + 1))), int(rng.integers(10, max(11, h - 9))))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_DUPLEX, font_scale, colour, 1, cv2.LINE_AA)
    return out


Corruption = Callable[[np.ndarray, object, np.random.Generator], np.ndarray]
# name → (function, parameters for severities 1-5): MedMNIST-C's DermaMNIST registry.
DERMATOSCOPY: dict[str, tuple[Corruption, list]] = {
    "pixelate": (_pixelate, [0.7, 0.5, 0.40, 0.30, 0.25]),
    "jpeg_compression": (_jpeg, [30, 20, 15, 10, 7]),
    "gaussian_noise": (_gaussian_noise, [0.04, 0.08, 0.12, 0.18, 0.26]),
    "speckle_noise": (_speckle_noise, [0.05, 0.15, 0.2, 0.35, 0.45]),
    "impulse_noise": (_impulse_noise, [0.01, 0.03, 0.06, 0.09, 0.17]),
    "shot_noise": (_shot_noise, [60, 25, 18, 10, 5]),
    "defocus_blur": (_defocus_blur, [(4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)]),
    "motion_blur": (_motion_blur, [(10, 5), (15, 5), (15, 8), (15, 12), (20, 15)]),
    "zoom_blur": (_zoom_blur, [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                               np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)]),
    "brightness_up": (_brightness, [1.1, 1.2, 1.3, 1.4, 1.5]),
    "brightness_down": (_brightness, [0.9, 0.8, 0.7, 0.6, 0.5]),
    "contrast_up": (_contrast, [1.1, 1.2, 1.3, 1.4, 1.6]),
    "contrast_down": (_contrast, [0.8, 0.7, 0.6, 0.5, 0.4]),
    "black_corner": (_black_corner, [1.10, 1.05, 1.00, 0.90, 0.95]),
    "characters": (_characters, [(1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18)]),
}
NAMES = tuple(DERMATOSCOPY)


class CorruptionError(ValueError):
    """An unknown corruption name or a severity outside 1-5."""


def check(name: str, severity: int) -> None:
    if name not in DERMATOSCOPY:
        raise CorruptionError(f"unknown corruption {name!r}; choose one of: {', '.join(NAMES)}")
    if severity not in SEVERITIES:
        raise CorruptionError(f"severity {severity} is outside 1-5 (corruption {name})")


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """``image`` with corruption ``name`` at ``severity`` (1-5), same size and mode, seeded by the image's pixels."""
    check(name, severity)
    fn, params = DERMATOSCOPY[name]
    mode, size = image.mode, image.size
    rgb = image.convert("RGB")
    digest = hashlib.sha256(rgb.tobytes() + f"{name}:{severity}:{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    scale = WORK_SIDE / max(size)
    work = rgb.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.Resampling.BICUBIC)
    out = Image.fromarray(np.ascontiguousarray(fn(np.asarray(work), params[severity - 1], rng)).astype(np.uint8))
    out = out.resize(size, Image.Resampling.BICUBIC if scale < 1 else Image.Resampling.BOX)
    return out.convert(mode) if mode != "RGB" else out


def corrupt_bytes(data: bytes, name: str, severity: int, seed: int = 0) -> bytes:
    """Encoded image bytes → the corrupted image, re-encoded losslessly (PNG) so only the corruption degrades it."""
    im = Image.open(io.BytesIO(data))
    im.load()
    out = corrupt(im, name, severity, seed)
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()
