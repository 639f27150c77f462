"""``dermvlm model push``: --dry-run lists exactly what one commit would upload (model, processor, the card with the
evaluation's results as model-index metrics and fairness/robustness tables); without a token, offline, or with the
Hub unreachable it refuses in one line and commits nothing; a served model folder answers to its card's name."""

from __future__ import annotations

import json
import shutil
import socket

import yaml
from huggingface_hub import metadata_load
from typer.testing import CliRunner

from dermvlm.cli import app

runner = CliRunner()
METRICS = {"suite": "sample", "model": "nano", "suite_config": {"split": "test"}, "metrics": {
    "primary": "mcq", "types": {
        "mcq": {"n": 20, "accuracy": 0.45, "balanced_accuracy": 0.4, "macro_f1": 0.35,
                "ci95": {"accuracy": [0.25, 0.65]},
                "fairness": {"tone": {"min_n": 5, "groups": {
                    "light": {"n": 12, "accuracy": 0.5, "balanced_accuracy": 0.45},
                    "tan": {"n": 8, "accuracy": 0.375, "balanced_accuracy": 0.3}}}}},
        "open": {"n": 20, "accuracy": 0.3, "balanced_accuracy": 0.25, "macro_f1": 0.2}}}}


def a_run(tmp_path, nano_dir):
    run = tmp_path / "runs" / "derm"
    model = run / "dpo" / "model"
    shutil.copytree(nano_dir, model)
    (model / "README.md").write_text("---\nlibrary_name: transformers\nmodel_name: derm\n---\n\n# derm\n\n"
                                     "**Research use only.** Not a medical device.\n")
    (run / "manifest.json").write_text(json.dumps({"final_model": "runs/derm/dpo/model", "final_model_key": "k1"}))
    for suite, key in (("sample", "k1"), ("old", "k0")):  # an earlier model's evaluation is left out
        (run / "eval" / suite).mkdir(parents=True)
        (run / "eval" / suite / "metrics.json").write_text(json.dumps(METRICS | {"suite": suite}))
        (run / "eval" / suite / "model_key.txt").write_text(key)
    (run / "eval" / "sample" / "robustness.json").write_text(json.dumps(
        {"clean": {"balanced_accuracy": 0.4}, "mean_relative_balanced_accuracy": {"pixelate": 0.9, "ink": 0.6}}))
    return run, model


def test_dry_run_lists_the_upload_and_the_card_carries_the_results(tmp_path, nano_dir, monkeypatch):
    from dermvlm.hub.push import plan

    run, model = a_run(tmp_path, nano_dir)
    r = runner.invoke(app, ["model", "push", str(run), "--repo", "me/derm", "--dry-run"])
    assert r.exit_code == 0, r.output
    listed = [line.split()[0] for line in r.output.splitlines()[1:]]
    expected = sorted(p.name for p in model.iterdir() if p.name != "README.md" and not p.name.startswith("."))
    assert sorted(listed) == sorted([*expected, "README.md"]) and "evaluation results: sample" in r.output
    assert "config.json" in listed and "tokenizer.json" in listed and "one commit" in r.output
    card = plan(run, "me/derm").card
    (tmp_path / "card.md").write_text(card)
    index = metadata_load(tmp_path / "card.md")["model-index"][0]
    values = {(res["dataset"]["config"], m["type"]): m["value"] for res in index["results"] for m in res["metrics"]}
    assert values[("mcq", "accuracy")] == 0.45 and values[("open", "macro_f1")] == 0.2 and len(values) == 6
    assert "| sample | mcq | 20 | 0.450 [0.250, 0.650] |" in card and "| tan | 8 | 0.375 | 0.300 |" in card
    assert "| ink | 0.600 |" in card and card.index("## Evaluation") < card.index("**Research use only.**")
    assert "| old |" not in card


def test_push_refuses_in_one_line_and_commits_nothing(tmp_path, nano_dir, monkeypatch):
    run, _ = a_run(tmp_path, nano_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["model", "push", str(run), "--repo", "me/derm"])
    assert r.exit_code == 2 and r.output.startswith("error: HF_HUB_OFFLINE is set") and len(r.output.splitlines()) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token either
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    r = runner.invoke(app, ["model", "push", str(run), "--repo", "me/derm"])
    assert r.exit_code == 2 and "no Hugging Face token" in r.output and len(r.output.splitlines()) == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there: the Hub is unreachable
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    r = runner.invoke(app, ["model", "push", str(run), "--repo", "me/derm"])
    assert r.exit_code == 2 and "could not be reached" in r.output and "nothing was committed" in r.output
    assert len(r.output.splitlines()) == 1 and "Traceback" not in r.output
    r = runner.invoke(app, ["model", "push", str(tmp_path), "--repo", "me/derm", "--dry-run"])
    assert r.exit_code == 2 and "neither a run folder" in r.output
    r = runner.invoke(app, ["model", "push", str(run), "--repo", "not a repo", "--dry-run"])
    assert r.exit_code == 2 and "expected ORG/NAME" in r.output


def test_a_served_folder_answers_to_its_cards_model_name(tmp_path, nano_dir):
    from dermvlm.serving.server import ServeOptions

    _, model = a_run(tmp_path, nano_dir)
    assert ServeOptions(model=str(model)).model_name == "derm"
    assert ServeOptions(model=str(nano_dir)).model_name == nano_dir.name  # no card name: the folder's
    assert ServeOptions(model=str(model), served_model_name="x").model_name == "x"
    assert yaml.safe_load((model / "README.md").read_text().split("---")[1])["model_name"] == "derm"
