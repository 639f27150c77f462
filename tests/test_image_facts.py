"""What an image says about itself: ITA skin tone on patches of known colour, artefact detectors on synthetic
artefacts over real skin, odd images skipped with a reason, and the fairness figures in metrics and reports."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image

from dermvlm.datasets import artefacts, skin_tone
from dermvlm.datasets.image_facts import image_facts
from dermvlm.evaluation import metrics as M
from dermvlm.evaluation.report import plots, write_report
from dermvlm.evaluation.score import score_predictions
from dermvlm.knowledge import load_graph


def lab_patch(light: float, a: float, b: float, size: int = 128) -> np.ndarray:
    """An sRGB uint8 patch of one CIELAB colour."""
    lab = np.zeros((size, size, 3), np.float32)
    lab[...] = (light, a, b)
    return (np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1) * 255).round().astype(np.uint8)


def with_lesion(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    cv2.circle(out, (w // 2, h // 2), h // 5, (70, 40, 30), -1)  # a dark brown lesion, to be left out
    return out


@pytest.mark.parametrize(("light", "b", "group", "fitz"), [(75, 12, "very light", 1), (62, 10, "light", 2),
                                                           (55, 20, "tan", 5), (40, 22, "brown", 6),
                                                           (30, 15, "dark", 6)])
def test_ita_of_known_colours_leaves_the_lesion_out(light, b, group, fitz):
    expected = math.degrees(math.atan((light - 50) / b))
    e = skin_tone.estimate(Image.fromarray(with_lesion(lab_patch(light, 12, b))))
    assert e.ita == pytest.approx(expected, abs=1.5), e
    assert e.tone_group == group == skin_tone.tone_group(expected) and e.fitzpatrick_like == fitz
    assert 0.6 < e.skin_fraction < 0.95  # the lesion disc (~12% of the patch) is not skin


@pytest.mark.parametrize(("image", "reason"), [
    (Image.new("RGB", (4, 4), (200, 160, 140)), "too small"),
    (Image.new("RGB", (64, 64), (200, 160, 140)), "blank"),
    (Image.fromarray(np.tile(np.linspace(40, 220, 64, dtype=np.uint8), (64, 1))), "too blue"),  # grayscale
    (Image.new("RGB", (64, 64), (0, 0, 0)), "blank"),
])
def test_images_without_an_estimate_say_why(image, reason):
    e = skin_tone.estimate(image)
    assert e.ita is None and reason in e.skipped


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "F"])
def test_odd_modes_and_sizes_never_crash(mode):
    base = Image.fromarray(with_lesion(lab_patch(65, 12, 16)))
    im = base.convert(mode) if mode not in ("I;16", "F") else base.convert("L").convert(mode)
    facts = image_facts(im)
    assert set(facts) == {"skin_tone_ita", "tone_group", "fitzpatrick_like", "artefacts", "skipped"}


def test_huge_and_tiny_images():
    huge = Image.fromarray(with_lesion(lab_patch(65, 12, 16, size=64))).resize((6000, 4000))
    assert image_facts(huge)["tone_group"] == "light"
    tiny = image_facts(Image.new("RGB", (3, 3), (200, 150, 130)))
    assert tiny["skin_tone_ita"] is None and "too small" in tiny["skipped"]["skin_tone"]


def skin(size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    rgb = with_lesion(lab_patch(68, 14, 18, size)).astype(np.int16)
    return np.clip(rgb + rng.integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)


def planted(kind: str) -> np.ndarray:
    rgb = skin()
    s = rgb.shape[0]
    if kind == "dark_corners":
        yy, xx = np.mgrid[:s, :s]
        r = np.hypot(yy - s / 2, xx - s / 2) / (s / 2)
        rgb = (rgb * np.clip(1.6 - r, 0, 1)[..., None] ** 3).astype(np.uint8)
    elif kind == "ink":
        cv2.ellipse(rgb, (s // 2, s // 2), (int(s * 0.4), int(s * 0.33)), 0, 0, 360, (80, 60, 170), 3)
    elif kind == "hair":
        rng = np.random.default_rng(1)
        for _ in range(40):  # long dark strands, 1-2 px wide
            start, step = rng.integers(0, s, 2), rng.integers(-20, 21, 2)
            pts = start + np.cumsum(step + rng.integers(-4, 5, (10, 2)), axis=0)
            cv2.polylines(rgb, [pts.astype(np.int32)], False, (35, 25, 20), int(rng.integers(1, 3)))
    elif kind == "ruler":
        cv2.rectangle(rgb, (10, s - 30), (s - 10, s - 8), (235, 235, 230), -1)
        for x in range(14, s - 12, 12):  # millimetre ticks, 2 px wide, every fifth longer
            cv2.rectangle(rgb, (x, s - 30), (x + 1, s - 20 if (x // 12) % 5 else s - 14), (20, 20, 20), -1)
    elif kind == "gel_bubbles":
        rng = np.random.default_rng(2)
        for _ in range(9):
            cv2.circle(rgb, tuple(int(v) for v in rng.integers(20, s - 20, 2)), 3, (250, 250, 250), -1)
    return rgb


@pytest.mark.parametrize("tag", artefacts.TAGS)
def test_each_detector_finds_its_planted_artefact_and_nothing_on_clean_skin(tag):
    found = artefacts.detect(Image.fromarray(planted(tag)))
    assert tag in found.tags, found
    clean = artefacts.detect(Image.fromarray(skin()))
    assert clean.tags == [] and found.scores[tag] > clean.scores[tag]


def test_small_images_skip_the_detail_detectors_with_the_reason():
    found = artefacts.detect(Image.fromarray(skin(28)))
    assert set(found.skipped) == {"ink", "ruler", "hair", "gel_bubbles"} and "28 px" in found.skipped["hair"]
    assert set(found.scores) == {"dark_corners"}


def test_fairness_hand_computed():
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", ["a", "x"], ""]
    y_true = ["m", "m", "n", "n", "m", "m", "n", "n", "m", "n"]
    y_pred = ["m", "n", "n", "n", "n", "n", "n", "m", "m", "n"]
    f = M.fairness(groups, y_true, y_pred, bootstrap=200, seed=0, min_n=2)
    # a: m 2/3 right, n 2/2 → balanced 5/6; b: m 0/2, n 1/2 → 1/4; x: one item (under min n)
    assert f["groups"]["a"]["n"] == 5 and f["groups"]["a"]["balanced_accuracy"] == pytest.approx(5 / 6, abs=1e-4)
    assert f["groups"]["b"]["balanced_accuracy"] == 0.25 and f["groups"]["b"]["recall"] == {"m": 0.0, "n": 0.5}
    assert f["worst_group"] == {"group": "b", "n": 4, "balanced_accuracy": 0.25}
    assert f["largest_gap"] == {"between": ["a", "b"], "balanced_accuracy": pytest.approx(5 / 6 - 0.25, abs=1e-4)}
    lo, hi = f["groups"]["a"]["ci95"]["balanced_accuracy"]
    assert lo <= 5 / 6 <= hi and "x" in f["groups"] and f["groups"]["x"]["n"] == 1
    assert M.fairness(groups, y_true, y_pred, bootstrap=200, seed=0, min_n=2) == f  # seeded
    assert "worst_group" not in M.fairness(groups, y_true, y_pred, bootstrap=0, min_n=50)


def test_strata_from_the_image_appear_in_metrics_and_the_report(tmp_path):
    kg = load_graph()
    rows = []
    for i in range(24):
        gold = ["melanoma", "melanocytic_nevus"][i % 2]
        said = gold if i % 3 else "seborrheic_keratosis"
        rows.append({"id": str(i), "type": "open", "label": gold, "label_name": gold, "options": [],
                     "answer": gold, "response": f"<answer>{said}</answer>", "fitzpatrick_group": "",
                     "site": "", "tone_group": ["light", "tan"][i % 4 // 2], "skin_tone_ita": 30.0,
                     "artefacts": ["ruler"] if i < 12 else [], "latency_s": 0.1, "completion_tokens": 3})
    m = score_predictions(rows, kg, bootstrap=100)
    fair = m["types"]["open"]["fairness"]
    assert set(fair) == {"tone", "artefact"}  # no Fitzpatrick labels and no sites: left out
    assert set(fair["tone"]["groups"]) == {"light", "tan"} and set(fair["artefact"]["groups"]) == {"ruler", "none"}
    assert fair["artefact"]["groups"]["ruler"]["n"] == 12 and "worst_group" in fair["tone"]
    result = {"suite": "s", "model": "m", "endpoint": "http://127.0.0.1:1/v1", "metrics": m}
    made = plots(result, tmp_path)
    assert tmp_path / "fairness.png" in made
    text = write_report(result, tmp_path).read_text()
    worst = fair["tone"]["worst_group"]
    assert "## Fairness (open)" in text and f"worst group **{worst['group']}**" in text and "fairness.png" in text
