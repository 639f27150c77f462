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


def served_image_side(base_url: str, model: str, api_key: str | None = None) -> int | None:
    """The side to send images at for ``model`` at ``base_url``: its model folder's (``models.pixels.image_side``)
    when the endpoint is on this machine and names a local folder as the model's root (vLLM does; for a LoRA
    adapter, its base model's), else ``None``."""
    import ipaddress
    from urllib.parse import urlsplit

    import httpx

    from dermvlm.models.pixels import image_side

    host = urlsplit(base_url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        return None
    try:
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"},
                      timeout=10)
        cards = {m["id"]: m for m in r.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    card = cards.get(model) or {}
    if card.get("parent") in cards:  # a LoRA adapter: its base model's folder holds the processor
        card = cards[card["parent"]]
    root = card.get("root")
    return image_side(root) if root and Path(root).is_dir() else None
