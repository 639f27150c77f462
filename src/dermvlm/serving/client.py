"""Small helpers for talking to an OpenAI-compatible endpoint about an image."""

from __future__ import annotations

import base64
import io
import mimetypes
from pathlib import Path
from typing import Any


def image_data_url(path: str | Path, max_side: int | None = None) -> str:
    """A ``data:`` URL for an image file (re-encoded as JPEG when ``max_side`` asks for a downscale)."""
    path = Path(path)
    if max_side is None:
        mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def image_messages(image: str | Path, question: str, system: str | None = None) -> list[dict[str, Any]]:
    """OpenAI chat messages: an optional system prompt and one user turn with the image and the question."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": question},
        ],
    })
    return messages


def ask_about_image(client, model: str, image: str | Path, question: str, **kwargs: Any):
    """One chat completion about ``image``; returns the OpenAI response object."""
    kwargs.setdefault("temperature", 0.0)
    return client.chat.completions.create(model=model, messages=image_messages(image, question), **kwargs)
