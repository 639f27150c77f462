"""Image checks: decode, orient, convert to RGB, refuse decompression bombs, downscale, hash.

Every image a recipe stores goes through ``load_image``: it either returns a clean RGB image (EXIF orientation
applied; CMYK, palette, 16-bit and alpha converted; longer side at most ``max_side``) with its hashes, or raises
``ImageProblem`` with a one-line reason that the build reports in its list of skipped files.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

import dermvlm.datasets.photo_formats  # noqa: F401  (HEIC/HEIF files open)

DEFAULT_MAX_PIXELS = 40_000_000  # refuse larger decodes (decompression bombs)
DEFAULT_MAX_SIDE = 384


class ImageProblem(ValueError):
    """An image that cannot be used; ``str()`` is the reason."""


@dataclass
class CleanImage:
    """A decoded, RGB, size-bounded image, its encoded bytes and hashes."""

    image: Image.Image
    data: bytes  # encoded (PNG for small images, JPEG q=95 otherwise): what the dataset stores
    sha256: str  # of the decoded RGB pixels: identical pictures in different files match
    phash: int  # 64-bit perceptual hash for near-duplicate detection
    original_size: tuple[int, int]


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        im = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype("uint8"), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im


def phash64(im: Image.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(im)), 16)


def load_image(path: str | Path, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> CleanImage:
    """Decode and clean one image file; raise ``ImageProblem`` with the reason when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise ImageProblem("missing file")
    if path.stat().st_size == 0:
        raise ImageProblem("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                w, h = probe.size
                if w * h > max_pixels:
                    raise ImageProblem(f"too many pixels ({w}x{h} > {max_pixels:,}): possible decompression bomb")
                probe.verify()
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageProblem(f"decompression bomb refused ({err})") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image PIL can decode") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageProblem(f"corrupt or truncated image ({err})") from None
    original = rgb.size
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    sha = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
    buf = io.BytesIO()
    if max(rgb.size) <= 64:
        rgb.save(buf, "PNG", optimize=False)
    else:
        rgb.save(buf, "JPEG", quality=95)
    return CleanImage(image=rgb, data=buf.getvalue(), sha256=sha, phash=phash64(rgb), original_size=original)
