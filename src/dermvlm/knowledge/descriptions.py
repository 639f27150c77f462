"""Multi-aspect text descriptions of a disease from the graph (one short sentence per aspect), in the spirit of
MAKE's sub-captions: what the vision stage's contrastive objective aligns images with."""

from __future__ import annotations

ASPECTS = ("morphology", "colour", "border", "distribution", "site", "dermoscopic")
ASPECT_WORDS = {"morphology": "looks like", "colour": "is coloured", "border": "has a border that is",
                "distribution": "is distributed as", "site": "is typically found on the",
                "dermoscopic": "shows on dermoscopy"}


def aspect_descriptions(kg, disease: str, aspects: tuple[str, ...] = ASPECTS, max_features: int = 4) -> dict[str, str]:
    """``{aspect: sentence}`` for every aspect the graph has facts on (the name alone when it has none)."""
    name = kg.name(disease)
    out = {}
    for aspect in aspects:
        feats = [kg.name(f) for f in kg.features(disease, aspect)[:max_features]]
        if feats:
            out[aspect] = f"{name} {ASPECT_WORDS[aspect]} {', '.join(feats)}."
    return out or {"name": f"a skin lesion: {name}."}
