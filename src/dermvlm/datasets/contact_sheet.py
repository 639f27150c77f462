"""Contact sheets: a grid of thumbnails with a caption each (an image id and a score), so a person can check a
detector's or a ranking's hits by eye."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from dermvlm.datasets.skin_tone import rgb_array
from dermvlm.io import atomic_write_bytes


def contact_sheet(items: Sequence[tuple[str | Path | Image.Image, str]], out: Path, thumb: int = 112,
                  columns: int = 8) -> Path:
    """Write a PNG grid of ``(image, caption)`` items, in the order given (put the worst first)."""
    rows = max(1, -(-len(items) // columns))
    caption_h = 14
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(items):
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption_h)
        try:
            im = Image.fromarray(rgb_array(image, max_side=thumb))
        except (OSError, ValueError):
            im = Image.new("RGB", (thumb, thumb), "grey")
        sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        draw.text((x + 2, y + thumb), caption[: thumb // 6], fill="black")
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return atomic_write_bytes(out, buf.getvalue())
