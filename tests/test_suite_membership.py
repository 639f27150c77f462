"""Suite membership pinned and checked: a suite writes which images it asks about, and a suite (or the demo's
question) that shows images of the training run's train split is refused before any request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import SuiteConfig, load_config
from dermvlm.evaluation.items import build_items
from dermvlm.evaluation.membership import MEMBERS, SplitOverlapError, check_held_out, write_members

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "eval" / "sample.yaml"
SAMPLE = ROOT / "src" / "dermvlm" / "sample_data"


@pytest.fixture(scope="module")
def split_items(tmp_path_factory):
    """The sample suite's test and train items (the sample recipe holds out the same test split)."""
    out = tmp_path_factory.mktemp("members")
    suite = load_config(SUITE, SuiteConfig)
    return {split: build_items(suite.model_copy(update={"split": split}), out / split, base=SUITE.parent)
            for split in ("test", "train")}


def test_members_file_names_every_item_and_its_image(split_items, tmp_path):
    items = split_items["test"]
    hashes = write_members(tmp_path, items)
    members = json.loads((tmp_path / MEMBERS).read_text())
    assert members["n"] == len(items) == len(hashes)
    assert [m["id"] for m in members["items"]] == [it["id"] for it in items]
    assert all(len(m["phash"]) == 16 and m["group_id"] for m in members["items"])


def test_held_out_split_passes_and_the_train_split_is_refused(split_items, recipe_data, tmp_path):
    test = split_items["test"]
    check_held_out("sample", test, write_members(tmp_path, test), recipe_data)
    train = split_items["train"]
    with pytest.raises(SplitOverlapError, match=rf"suite sample: {len(train)} of {len(train)} items show images of "
                                                r"the training split"):
        check_held_out("sample", train, write_members(tmp_path, train), recipe_data)


def test_eval_with_run_refuses_training_images_before_any_request(recipe_data, tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "data").symlink_to(recipe_data)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", str(SUITE), "--split", "train", "--run", str(run), "--endpoint",
                                   "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "items show images of the training split" in lines[0]
    assert not (out / "predictions.jsonl").exists()  # refused before the (dead) endpoint was asked
    res = CliRunner().invoke(app, ["eval", str(SUITE), "--run", str(tmp_path / "nowhere"), "--endpoint",
                                   "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out)])
    assert res.exit_code == 2 and "--run" in res.output and "no built data recipe" in res.output


def test_the_demo_asks_about_a_held_out_image(recipe_data):
    from dermvlm.demo import check_demo_image_held_out

    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    check_demo_image_held_out(SAMPLE / cfg["demo"]["image"], recipe_data, "nano-cpu.yaml")
    with pytest.raises(ValueError, match=r"PAT_1067_284_533\.jpg is in the run.s training split"):
        check_demo_image_held_out(SAMPLE / "pad_ufes_20" / "PAT_1067_284_533.jpg", recipe_data, "nano-cpu.yaml")


def test_an_unreadable_image_is_recorded_without_a_hash_and_skipped(split_items, recipe_data, tmp_path):
    items = [dict(split_items["test"][0], image=b"\xff\xd8\xff\xe0 not a jpeg"), *split_items["test"][1:3]]
    hashes = write_members(tmp_path, items)
    assert hashes[0] is None and all(h is not None for h in hashes[1:])
    assert json.loads((tmp_path / MEMBERS).read_text())["items"][0]["phash"] == ""
    check_held_out("sample", items, hashes, recipe_data)  # the request, not the check, reports the bad image
