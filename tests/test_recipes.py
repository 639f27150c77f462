"""Data recipes: every kind in TRL's formats, byte-for-byte determinism, no test-split training, bad recipes."""

from __future__ import annotations

import filecmp
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import ConfigError, RecipeConfig, load_config
from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.records import Record
from dermvlm.knowledge import KGScorer, load_graph
from dermvlm.knowledge.grounding import RecordFacts
from dermvlm.recipes.build import build
from dermvlm.recipes.kinds import Context, attribute_items

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["attribute", "caption", "conversation", "eval_item", "grpo_prompt", "image_label", "mcq", "open_diagnosis",
         "preference_pair", "reasoning_trace", "yes_no"]


def recipe(name: str = "sample.yaml", **changes) -> RecipeConfig:
    data = yaml.safe_load((ROOT / "data_recipes" / name).read_text())
    data.update(changes)
    return RecipeConfig.model_validate(data)


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "sample"
    result = build(recipe(), out, progress=False)
    return out, result


def dirs_identical(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    names = [f for f in cmp.common_files]
    _match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors and all(dirs_identical(a / d, b / d) for d in cmp.common_dirs)


def test_every_kind_in_trl_formats(sample_build):
    out, _result = sample_build
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == KINDS
    assert {"README.md", "stats.json", "skipped.csv", "recipe.json"} <= {p.name for p in out.iterdir()}
    for kind in ("mcq", "open_diagnosis", "yes_no", "attribute", "reasoning_trace", "conversation"):
        row = load_from_disk(str(out / kind))["train"][0]
        assert set(row) >= {"images", "messages"} and row["messages"][0]["role"] == "user"
        assert row["messages"][0]["content"][0]["type"] == "image" and row["messages"][-1]["role"] == "assistant"
        assert row["images"][0].mode == "RGB" and max(row["images"][0].size) <= 224
    grpo = load_from_disk(str(out / "grpo_prompt"))["train"][0]
    assert {"images", "prompt", "label", "category_path", "answer", "hint", "difficulty", "class_weight"} <= set(grpo)
    assert grpo["prompt"][-1]["role"] == "user" and grpo["category_path"][0] == "skin_disease"
    pair = load_from_disk(str(out / "preference_pair"))["train"][0]
    assert {"images", "prompt", "chosen", "rejected", "perturbation"} <= set(pair)
    images = load_from_disk(str(out / "image_label"))  # the vision stage's rows: every split, label per image
    assert sorted(images) == ["test", "train", "val"] and set(images["train"][0]) >= {"images", "label", "label_name"}
    evals = load_from_disk(str(out / "eval_item"))
    assert list(evals) == ["test"]
    item = evals["test"][0]
    assert {"images", "question", "options", "answer", "type", "id"} <= set(item)
    assert len({r["id"] for r in evals["test"]}) == len(evals["test"])
    card = (out / "README.md").read_text()
    assert "recipe hash" in card and "CC BY 4.0" in card and "| reasoning_trace |" in card
    from huggingface_hub import DatasetCard

    meta = DatasetCard.load(out / "README.md").data.to_dict()  # the Hub's own reader of the YAML block
    assert meta["license"] == "other" and "visual-question-answering" in meta["task_categories"]


def test_same_seed_same_bytes_other_seed_differs(sample_build, tmp_path):
    out, _ = sample_build
    build(recipe(), tmp_path / "again", progress=False)
    assert dirs_identical(out, tmp_path / "again")
    build(recipe(seed=1), tmp_path / "seed1", progress=False)
    assert not filecmp.cmp(out / "mcq" / "train" / "data-00000-of-00001.arrow",
                           tmp_path / "seed1" / "mcq" / "train" / "data-00000-of-00001.arrow", shallow=False)


def test_never_trains_on_test_and_groups_stay_whole(sample_build):
    out, _ = sample_build
    for kind in KINDS:
        # eval items are the test; image_label's test split is read only by the vision stage's probe report
        assert "test" not in load_from_disk(str(out / kind)) or kind in ("eval_item", "image_label")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_by_split"]["test"] > 0 and stats["duplicates"]["cross_split_pairs"] == 0


def test_mcq_letters_balanced_and_distractors_are_wrong(sample_build):
    out, _ = sample_build
    kg = load_graph()
    letters = Counter()
    for row in load_from_disk(str(out / "mcq"))["train"]:
        q = row["messages"][0]["content"][1]["text"]
        options = re.findall(r"^([A-J])\. (.+)$", q, re.M)
        answer = row["messages"][-1]["content"][0]["text"].split("<answer>")[1]
        letter = answer[0]
        letters[letter] += 1
        names = [o for _, o in options]
        assert names.count(kg.name(row["label"])) == 1 and dict(options)[letter] == kg.name(row["label"])
        for name in names:
            if name != kg.name(row["label"]):
                assert not kg.covers(row["label"], kg.resolve(name))
    assert max(letters.values()) - min(letters.values()) <= 1


def test_reasoning_traces_are_graph_consistent(sample_build):
    out, _ = sample_build
    scorer = KGScorer()
    rows = load_from_disk(str(out / "reasoning_trace"))["train"]
    scores = [scorer.score(r["messages"][-1]["content"][0]["text"], r["label"]) for r in rows]
    assert all(s.has_answer_tag and s.diagnosis_credit == 1.0 and not s.contradicted for s in scores)
    assert min(s.score for s in scores) >= 0.9
    texts = {r["messages"][-1]["content"][0]["text"].split(". ")[1] for r in rows}
    assert len(texts) > 5  # varied phrasings


def test_preference_pairs_are_ranked_by_the_kg_scorer(sample_build):
    out, _ = sample_build
    rows = load_from_disk(str(out / "preference_pair"))["train"]
    seen = Counter(r["perturbation"] for r in rows)
    assert set(seen) == {"wrong_diagnosis", "contradicted_feature", "missing_referral", "hallucinated_disease",
                         "broken_format", "wrong_record_fact"}
    for r in rows:
        if r["perturbation"] != "broken_format":
            assert r["chosen_score"] > r["rejected_score"], r["perturbation"]
        else:
            assert "<answer>" not in r["rejected"][0]["content"][0]["text"]


def test_sample_build_carries_record_facts_and_grounded_pairs(sample_build):
    out, _ = sample_build
    grpo = load_from_disk(str(out / "grpo_prompt"))["train"]
    with_facts = [r for r in grpo if r["record_facts"]]
    assert with_facts and all(RecordFacts.from_json(r["record_facts"]) for r in with_facts)
    traces = [r["messages"][-1]["content"][0]["text"] for r in load_from_disk(str(out / "reasoning_trace"))["train"]]
    assert all("Here: a " in t for t in traces) and any("Reported here: " in t for t in traces)
    pairs = [r for r in load_from_disk(str(out / "preference_pair"))["train"]
             if r["perturbation"] == "wrong_record_fact"]
    assert pairs and all(r["chosen_score"] > r["rejected_score"] for r in pairs)


def test_attribute_questions_only_from_metadata_or_graph():
    kg = load_graph()
    ctx = Context(kg, ["melanoma"], Counter({"melanoma": 1}))
    import random

    bare = Record(image="x", label="melanoma", source_label="mel", dataset="isic", split="train", group_id="g")
    kinds = {a for a, *_ in attribute_items(ctx, bare, random.Random(0), ["site", "fitzpatrick", "malignancy"])}
    assert kinds == {"malignancy"}
    rich = Record(image="x", label="melanoma", source_label="mel", dataset="pad_ufes_20", split="train",
                  group_id="g", fitzpatrick=4, site="back")
    items = attribute_items(ctx, rich, random.Random(0), ["site", "fitzpatrick"])
    assert [(a, ans) for a, _, _, ans in items] == [("site", "back"), ("fitzpatrick", "type IV")]


def test_dermamnist_official_splits_and_eval_items(tmp_path, shared_data):
    cfg = recipe("dermamnist.yaml")
    cfg.sources[0].root = str(shared_data / "dermamnist")
    cfg.sources[0].limit_per_split = 40
    result = build(cfg, tmp_path / "d", progress=False)
    assert result.stats["records_by_split"] == {"test": 40, "train": 40, "val": 40}
    evals = load_from_disk(str(tmp_path / "d" / "eval_item"))
    assert set(evals) == {"val", "test"}
    mcq = [r for r in evals["test"] if r["type"] == "mcq"]
    assert all(len(r["options"]) == 7 for r in mcq)  # all seven DermaMNIST classes


# ------------------------------------------------------------------ bad recipes and atomic output


def test_recipe_typo_names_file_and_field(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text((ROOT / "data_recipes" / "sample.yaml").read_text().replace("mcq: {options: 4}",
                                                                           "mcq: {optionz: 4}"))
    with pytest.raises(ConfigError, match=rf"(?s){re.escape(str(p))}.*kinds\.mcq\.optionz: unknown key 'optionz' "
                                          r"\(did you mean 'options'\?\)"):
        load_config(p, RecipeConfig)


def test_training_kind_on_test_split_is_refused(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text((ROOT / "data_recipes" / "sample.yaml").read_text().replace(
        "open_diagnosis: {}", "open_diagnosis: {splits: [train, test]}"))
    with pytest.raises(ConfigError, match=r"kinds\.open_diagnosis\.splits includes 'test': training data never"):
        load_config(p, RecipeConfig)


def test_more_options_than_the_graph_or_the_build_has(tmp_path):
    import random

    from dermvlm.recipes.kinds import distractors

    kg = load_graph()
    ctx = Context(kg, ["accessory_tragus"], Counter({"accessory_tragus": 1}))
    with pytest.raises(DatasetError, match=r"10 options asked, but 'accessory_tragus' has only \d+ possible "
                                           r"distractor\(s\) in the graph \(differentials and siblings\)"):
        distractors(ctx, "accessory_tragus", 9, random.Random(0), "graph")
    cfg = recipe(kinds={"mcq": {"options": 8, "distractors": "dataset"}})
    with pytest.raises(DatasetError, match=r"8 options asked, but '.*' has only 5 possible distractor\(s\) in the "
                                           r"labels of this build: lower 'options' or use distractors: graph"):
        build(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing_and_a_fixed_rerun_is_complete(tmp_path, shared_data):
    images = sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))[:12]
    labels = tmp_path / "labels.csv"
    rows = [f"{p.name},{'melanoma' if i % 2 else 'nevus'},p{i}" for i, p in enumerate(images)]
    rows[3] = f"{images[3].name},melanomma,p3"
    labels.write_text("file,dx,patient\n" + "\n".join(rows) + "\n")
    (tmp_path / "broken.jpg").write_bytes(b"")
    labels.write_text(labels.read_text() + f"{tmp_path / 'broken.jpg'},melanoma,p99\n")
    out = tmp_path / "mine"
    runner = CliRunner()
    args = ["data", "build", str(ROOT / "data_recipes" / "my_images.yaml"), "--out", str(out), "--images",
            str(images[0].parent), "--labels", str(labels), "--image-col", "file", "--label-col", "dx",
            "--group-col", "patient"]
    r = runner.invoke(app, args)  # broken.jpg lies outside --images: refused unless allowed
    assert r.exit_code == 2 and "row 14, column 'file'" in r.output and "outside the images folder" in r.output
    args.append("--allow-outside-images")
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "'melanomma' (1 images)" in r.output and "closest: melanoma" in r.output
    assert not out.exists() and not any(p.name.startswith(".mine") for p in tmp_path.iterdir())
    labels.write_text(labels.read_text().replace("melanomma", "melanoma"))
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "skipped 1 file(s): empty file (1)" in r.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records"] == 12 and sum(stats["kinds"]["reasoning_trace"].values()) > 0
    r = runner.invoke(app, ["data", "inspect", str(out)])
    assert r.exit_code == 0 and "[reasoning_trace]" in r.output and (out / "labels.png").stat().st_size > 5000


def test_train_fraction_is_stratified_and_leaves_val_and_test_whole(shared_data):
    from collections import Counter

    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.knowledge import load_graph
    from dermvlm.recipes.build import collect_records

    recipe = load_config(ROOT / "data_recipes" / "dermamnist_learning_low.yaml", RecipeConfig)
    recipe.sources[0].root = str(shared_data / "dermamnist")
    full = recipe.model_copy(deep=True)
    full.sources[0].train_fraction = None
    kg = load_graph()
    low, _, _ = collect_records(recipe, kg)
    whole, _, _ = collect_records(full, kg)
    by = {name: Counter((r.split, r.label) for r in recs) for name, recs in (("low", low), ("whole", whole))}
    for (split, label), n in by["whole"].items():
        if split == "train":
            assert by["low"][(split, label)] == max(1, round(0.1 * n))  # 10% of every class
        else:
            assert by["low"][(split, label)] == n  # val and test untouched
    again, _, _ = collect_records(recipe, kg)
    assert [r.image for r in again] == [r.image for r in low]  # seeded
