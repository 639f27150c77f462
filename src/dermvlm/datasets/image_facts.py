"""What an image itself says, for records and evaluation strata: the ITA skin-tone estimate and artefact tags,
read from one decode of the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from dermvlm.datasets import artefacts, skin_tone


def image_facts(image: str | Path | Image.Image) -> dict[str, Any]:
    """``skin_tone_ita`` (None when skipped), ``tone_group``, ``fitzpatrick_like`` (0 when skipped), ``artefacts``
    (tags) and ``skipped`` (detector → why)."""
    try:
        im = Image.fromarray(skin_tone.rgb_array(image, max_side=512))
    except (OSError, ValueError) as e:
        return {"skin_tone_ita": None, "tone_group": "", "fitzpatrick_like": 0, "artefacts": [],
                "skipped": {"image": f"unreadable ({e})"}}
    tone = skin_tone.estimate(im)
    tags = artefacts.detect(im)
    skipped = dict(tags.skipped) | ({"skin_tone": tone.skipped} if tone.skipped else {})
    return {"skin_tone_ita": tone.ita, "tone_group": tone.tone_group, "fitzpatrick_like": tone.fitzpatrick_like or 0,
            "artefacts": list(tags.tags), "skipped": skipped}
