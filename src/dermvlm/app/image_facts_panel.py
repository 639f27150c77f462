"""What the uploaded image itself shows, measured as the data audit measures it (``datasets/image_facts.py``): the
artefacts (ink, ruler, dark corners, hair, gel bubbles) and the ITA skin-tone group, with one sentence on why
they matter for the answer."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.image_facts import image_facts

ARTEFACT_NAMES = {"dark_corners": "dark corners (dermoscope rim or vignetting)", "ink": "ink or marker lines",
                  "ruler": "a ruler", "hair": "dense hair", "gel_bubbles": "dermoscopy gel bubbles"}
WHY = ("Why it matters: models are known to pick up such marks and skin tone along with the lesion (surgical ink "
       "marks raised a melanoma classifier's false positives, Winkler et al. 2019; accuracy is lower on darker skin "
       "tones, Daneshjou et al. 2022): read the answer with them in mind.")
ROMAN = ("", "I", "II", "III", "IV", "V", "VI")


def facts_markdown(image: str | Path) -> str:
    """The panel's Markdown for one image: artefacts found (or none), the tone group with its ITA, and why."""
    facts = image_facts(image)
    if "image" in facts["skipped"]:
        return ""
    found = [ARTEFACT_NAMES.get(t, t.replace("_", " ")) for t in facts["artefacts"]]
    artefacts = ", ".join(found) if found else f"none found (checked: {', '.join(ARTEFACT_NAMES)})".replace("_", " ")
    if facts["skin_tone_ita"] is None:
        tone = f"not estimated: {facts['skipped'].get('skin_tone', 'no skin found')}"
    else:
        tone = (f"{facts['tone_group']} (ITA {facts['skin_tone_ita']:.0f}°, Fitzpatrick-like type "
                f"{ROMAN[facts['fitzpatrick_like']]}; an estimate from the image, not a label)")
    return f"**What the image itself shows**\n\n- Artefacts: {artefacts}\n- Skin tone: {tone}\n\n_{WHY}_"
