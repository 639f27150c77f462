"""`dermvlm data audit` on real images with planted faults: a flipped label and an off-topic photograph ranked
near the top, an exact copy found as a duplicate; the recipe's `exclude:` removes exactly the listed images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dermvlm.audit import audit, blank_or_clipped
from dermvlm.cli import app
from dermvlm.config import RecipeConfig
from dermvlm.recipes.build import build


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shared_data) -> Path:
    """24 ISIC dermoscopy images labelled nevus, 24 PAD-UFES-20 clinical photos labelled BCC; one dermoscopy image
    relabelled BCC (the flip), one crop of a real photo of a building (off-topic), one exact copy."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("planted")
    (root / "imgs").mkdir()
    rows = []
    for p in sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:24]:
        im = Image.open(p).convert("RGB")
        im.thumbnail((128, 128))
        im.save(root / "imgs" / f"{p.stem}.png")
        rows.append([f"{p.stem}.png", "melanocytic_nevus"])
    for p in sorted((shared_data / "pad_ufes_20").glob("images*/*.png"))[:24]:
        im = Image.open(p).convert("RGB")
        im.thumbnail((128, 128))
        im.save(root / "imgs" / f"{p.stem}.png")
        rows.append([f"{p.stem}.png", "basal_cell_carcinoma"])
    rows[5][1] = "basal_cell_carcinoma"  # the flip
    china = Image.fromarray(load_sample_images().images[0]).crop((0, 0, 240, 240)).resize((128, 128))
    china.save(root / "imgs" / "photo_building.png")
    rows.append(["photo_building.png", "melanocytic_nevus"])
    shutil.copy(root / "imgs" / rows[2][0], root / "imgs" / "copy_of_one.png")
    rows.append(["copy_of_one.png", "melanocytic_nevus"])
    with (root / "imgs" / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return root


def test_planted_faults_rank_near_the_top_and_the_report_is_complete(planted, tmp_path):
    recipe = RecipeConfig.model_validate({"name": "planted", "sources": [{"name": "csv"}],
                                          "kinds": {"image_label": {"splits": ["train", "val", "test"]}}})
    overrides = [{"name": "csv", "options": {"labels": str(planted / "imgs" / "labels.csv"),
                                             "images": str(planted / "imgs")}}]
    result = audit(recipe, tmp_path / "audit", overrides, folds=4)
    flipped = sorted(Path(p).stem for p in (planted / "imgs").glob("ISIC_*.png"))[5]
    assert flipped in [r["id"] for r in result["label_errors"][:3]], result["label_errors"][:5]
    assert "photo_building" in [r["id"] for r in result["off_topic"][:3]], result["off_topic"][:5]
    pairs = result["duplicates"]["pairs"]
    assert any({p["a"], p["b"]} >= {"copy_of_one"} and p["kind"] == "exact" for p in pairs)
    for name in ("audit.md", "audit.html", "audit.json", "exclude.yaml", "off_topic.png", "label_errors.png",
                 "duplicates.png"):
        assert (tmp_path / "audit" / name).is_file(), name
    assert "photo_building" in (tmp_path / "audit" / "audit.html").read_text()
    again = audit(recipe, tmp_path / "audit2", overrides, folds=4)
    assert json.dumps(again, sort_keys=True) == json.dumps(result, sort_keys=True)  # deterministic


def test_exclude_list_removes_exactly_those_items(planted, tmp_path):
    exclude = tmp_path / "exclude.yaml"
    gone = ["photo_building", "PAT_1067_284_533"]
    exclude.write_text(yaml.safe_dump({"exclude": [{"image": g, "why": "planted"} for g in gone]}))
    spec = {"name": "x", "sources": [{"name": "csv"}], "kinds": {"image_label": {"splits": ["train", "val", "test"]}}}
    overrides = [{"name": "csv", "options": {"labels": str(planted / "imgs" / "labels.csv"),
                                             "images": str(planted / "imgs")}}]
    full = build(RecipeConfig.model_validate(spec), tmp_path / "full", overrides, progress=False)
    cut = build(RecipeConfig.model_validate(spec | {"exclude": str(exclude)}), tmp_path / "cut", overrides,
                progress=False)
    assert full.stats["records"] - cut.stats["records"] == 2
    reasons = {Path(f).stem: why for f, why in cut.skipped}
    assert all(reasons[g] == "excluded by the recipe: planted" for g in gone)
    listed = build(RecipeConfig.model_validate(spec | {"exclude": ["photo_building"]}), tmp_path / "one",
                   overrides, progress=False)
    assert full.stats["records"] - listed.stats["records"] == 1


def test_blank_and_clipped_images_score_high(shared_data):
    skin = Image.open(sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[0])
    assert blank_or_clipped(skin) < 0.2 and blank_or_clipped(Image.new("RGB", (50, 50), "white")) == 1.0


def test_cli_audit_of_a_folder_and_its_one_line_errors(planted, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "audit", str(planted / "imgs"), "--out", str(tmp_path / "a"), "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert "audited 50 images" in res.output and (tmp_path / "a" / "exclude.yaml").is_file()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["data", "audit", str(tmp_path / "empty"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "needs a labels.csv" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [{name: sample}]\nkinds: {image_label: {}}\nexclude: nowhere.yaml\n")
    res = runner.invoke(app, ["data", "audit", str(bad), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "exclude: cannot read" in res.output


def test_cnn_classifier_ranks_the_flip_and_both_keeps_each_score(planted, tmp_path):
    """`both`: the cross-validated CNN alone and its mean with the feature regression each put the flipped label
    near the top; each classifier's own score is kept per image; the CNN's probabilities are deterministic."""
    from dermvlm.audit.cnn_probe import cross_validated_proba

    recipe = RecipeConfig.model_validate({"name": "planted", "sources": [{"name": "csv"}],
                                          "kinds": {"image_label": {"splits": ["train", "val", "test"]}}})
    overrides = [{"name": "csv", "options": {"labels": str(planted / "imgs" / "labels.csv"),
                                             "images": str(planted / "imgs")}}]
    flipped = sorted(Path(p).stem for p in (planted / "imgs").glob("ISIC_*.png"))[5]
    both = audit(recipe, tmp_path / "both", overrides, folds=4, classifier="both")
    info = both["label_classifier"]
    assert info["classifier"] == "both" and len(info["cnn"]["fold_accuracy"]) == 4
    assert min(info["cnn"]["fold_accuracy"]) > 0.7  # dermoscopy vs clinical photos: learnable
    assert flipped in [r["id"] for r in both["label_errors"][:3]], both["label_errors"][:5]
    by_cnn = sorted(both["per_image"], key=lambda r: r["label_confidence_cnn"])
    assert flipped in [r["id"] for r in by_cnn[:5]], by_cnn[:5]
    row = next(r for r in both["per_image"] if r["id"] == flipped)
    mean = (row["label_confidence_features"] + row["label_confidence_cnn"]) / 2
    assert row["label_confidence"] == pytest.approx(mean, abs=1e-3)
    assert both["thresholds"]["label_confidence"] == 0.05
    assert "small CNN" in (tmp_path / "both" / "audit.md").read_text()
    images = [Image.open(p) for p in sorted((planted / "imgs").glob("*.png"))[:16]]
    labels = ["a", "b"] * 8
    first = cross_validated_proba(images, labels, folds=2, seed=3, size=16)
    second = cross_validated_proba(images, labels, folds=2, seed=3, size=16)
    assert (first.proba == second.proba).all() and first.proba.shape == (16, 2)
    assert first.proba.sum(axis=1) == pytest.approx(1.0)


def test_label_error_candidates_of_evaluation_splits_are_held_for_review_not_excluded():
    from dermvlm.audit.ranking import _exclusions

    def row(i, split, conf, off=0.0):
        return {"id": i, "split": split, "label": "melanoma", "predicted": "melanocytic_nevus",
                "label_confidence": conf, "off_topic": off}

    rows = [row("tr_low", "train", 0.001), row("va_low", "val", 0.001), row("te_low", "test", 0.001),
            row("te_fine", "test", 0.9), row("te_blank", "test", 0.9, off=50.0), row("tr_copy", "train", 0.9),
            row("te_orig", "test", 0.9)]
    pairs = [{"a": "te_orig", "b": "tr_copy", "kind": "near", "distance": 1, "cross_split": True}]
    exclude, held = _exclusions(rows, pairs, threshold=0.02)
    assert {e["image"] for e in exclude} == {"tr_low", "te_blank", "tr_copy"}  # the test copy of a pair stays
    assert [(h["image"], h["split"]) for h in held] == [("va_low", "val"), ("te_low", "test")]
    assert all("out-of-sample probability 0.001" in h["why"] for h in held)
