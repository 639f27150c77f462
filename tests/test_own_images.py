"""A new user's run, end to end, as the README's "Your own images" section runs it: 40 PAD-UFES-20 photos of 36
patients and a labels CSV → ``dermvlm init`` → ``config check`` → ``pipeline --dry-run`` → ``data audit`` →
exclusions in the one config → ``pipeline`` (every stage, a few steps each; one vLLM start) → the model evaluated
on the test split its own data build held out. Exclusions leave every other image's split as it was, and the
evaluation asks about exactly the build's test images."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dermvlm.cli import app

# the 32 original photos and 8 of the added ones, three patients with two photos among them (PAT_154, PAT_63, PAT_834)
EXTRA = ("PAT_154_235_162", "PAT_154_237_625", "PAT_63_99_189", "PAT_63_99_736", "PAT_834_1572_973",
         "PAT_834_4490_317", "PAT_719_1361_234", "PAT_600_1141_988")
STEPS = {"vision": 4, "pretrain": 20, "grpo": 2, "sft": 2, "dpo": 2}  # the written config's stages, shortened
runner = CliRunner()


@pytest.fixture
def own_photos(shared_data, tmp_path, monkeypatch) -> Path:
    """``photos/`` (40 PAD-UFES-20 photos, CC BY 4.0) and ``labels.csv`` as a researcher would write it."""
    src = shared_data / "pad_ufes_20"
    meta = {r["img_id"]: r for r in csv.DictReader((src / "metadata.csv").read_text().splitlines())}
    files = sorted((src / "images").glob("*.png")) + [src / "images_extra" / f"{n}.png" for n in EXTRA]
    (tmp_path / "photos").mkdir()
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "diagnosis", "patient_id", "region"])
        for p in files:
            shutil.copy(p, tmp_path / "photos" / p.name)
            w.writerow([p.name, meta[p.name]["diagnostic"], meta[p.name]["patient_id"], meta[p.name]["region"]])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dermvlm(*argv: str) -> str:
    result = runner.invoke(app, list(argv))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def splits(path: Path) -> dict[str, str]:
    return {r["id"]: r["split"] for r in csv.DictReader(path.read_text().splitlines())}


@pytest.mark.vllm
def test_your_own_images_end_to_end(own_photos):
    started = time.perf_counter()
    out = dermvlm("init", "--images", "photos", "--labels", "labels.csv", "--out", "photos.yaml")
    assert "image column: file (guessed" in out and "label column: diagnosis (guessed" in out
    assert "group column: patient_id (guessed: a patient/lesion column" in out
    cfg = yaml.safe_load(Path("photos.yaml").read_text())
    assert cfg["data"] == {"images": "photos", "labels": "labels.csv", "image_col": "file", "label_col": "diagnosis",
                           "group_col": "patient_id", "site_col": "region"}  # relative to the config's folder
    cfg["data"]["modality"] = "clinical photograph"  # what the photos are, for the training text
    for stage in cfg["stages"]:
        stage["trl"]["max_steps"] = STEPS[stage["name"]]
    Path("photos.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    out = dermvlm("config", "check", "photos.yaml")
    assert "40 images in 36 groups, 6 classes" in out and "evaluation: the held-out test split (" in out
    assert "warning: small data:" in out  # 40 photos: said plainly, with counts
    out = dermvlm("pipeline", "photos.yaml", "--dry-run")  # builds the data, loads the model, one batch per stage
    assert all(f"stage {s} (" in out for s in STEPS) and "then: serve the final model and evaluate test" in out
    assert not Path("runs/photos/pretrain").exists()  # nothing trained
    before = splits(Path("runs/photos/data/splits.csv"))
    assert len(before) == 40 and {"train", "test"} <= set(before.values())
    rows = list(csv.DictReader(Path("labels.csv").read_text().splitlines()))
    patient = {Path(r["file"]).stem: r["patient_id"] for r in rows}
    for group in ("PAT_154", "PAT_63", "PAT_834", "PAT_198"):  # one patient's photos share a split
        assert len({s for i, s in before.items() if patient[i] == group}) == 1

    out = dermvlm("data", "audit", "photos.yaml", "--out", "audit")
    audit = json.loads(Path("audit/audit.json").read_text())
    assert "splits: the run build" in out  # it read runs/photos/data/splits.csv
    assert "rests on 40 images" in out and audit["label_error_caveat"]  # too few for its ranking: said
    assert all(r["split"] == before[r["id"]] for r in audit["per_image"])  # the audit's splits are the build's
    assert not [e for e in audit["exclude"] if "label" in e["why"]]  # nothing dropped on a 40-image classifier
    # the user looks at the audit and leaves out three training photos with pen marks and one test photo
    inked = [r["id"] for r in audit["per_image"] if "ink" in r["artefacts"] and r["split"] == "train"][:3]
    dropped = [*inked, sorted(i for i, s in before.items() if s == "test")[0]]
    assert len(dropped) == 4
    cfg["data"]["exclude"] = dropped
    Path("photos.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    out = dermvlm("pipeline", "photos.yaml")
    assert "eval test: mcq accuracy" in out

    after = splits(Path("runs/photos/data/splits.csv"))
    assert set(after) == set(before) - set(dropped)  # exclusions only remove ...
    assert all(after[i] == before[i] for i in after)  # ... and move no other image
    test_ids = {i for i, s in after.items() if s == "test"}
    members = json.loads(Path("runs/photos/eval/test/members.json").read_text())["items"]
    assert {m["image_id"] for m in members} == test_ids  # evaluated on the build's test split, all of it
    metrics = json.loads(Path("runs/photos/eval/test/metrics.json").read_text())
    assert metrics["n_items"] == 2 * len(test_ids) and metrics["errors"] == 0  # mcq and open per image
    assert json.loads(Path("runs/photos/manifest.json").read_text())["evaluation"]["test"]["mcq"]["n"] == len(test_ids)
    trace = Path("runs/photos/data/README.md").read_text()
    assert "Small data" in trace
    print(f"own-images journey: {time.perf_counter() - started:.0f} s")
