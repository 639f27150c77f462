"""Exit codes by command, as a table: a usage error is 2 on every command, an input or config error 2, an
interrupted pipeline 130 (``eval``'s 1 for failed requests and 128 + the signal: tests/test_eval_cache.py); and the
``--set KEY=VALUE`` overrides, validated like the file, with one-line errors naming the key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermvlm.cli import app

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "nano-cpu.yaml")
runner = CliRunner()
COMMANDS = [c for c, params in json.loads((ROOT / "tests" / "cli_surface.json").read_text()).items()
            if c != "dermvlm" and (params or c == "config check")]

# (command line, expected exit code, text of the one error line); {t} is a temporary folder
FAILURES = [
    (["pipeline", "{t}/none.yaml"], 2, "config file not found"),
    (["train", "sft", "{t}/none.yaml"], 2, "config file not found"),
    (["train", "nope", CONFIG], 2, "kind 'nope'"),
    (["config", "check", "{t}/none.yaml"], 2, "config file not found"),
    (["demo", "{t}/none.yaml"], 2, "config file not found"),
    (["eval", "{t}/none.yaml", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"], 2, "config file not found"),
    (["eval", "run", "{t}/none.yaml", "--serve", "{t}"], 2, "config file not found"),
    (["eval", "compare", "{t}"], 2, "no metrics.json"),
    (["eval", str(ROOT / "eval" / "sample.yaml")], 2, "give exactly one of --endpoint"),
    (["serve", "{t}/none"], 2, "model folder not found"),
    (["chat"], 2, "give either --endpoint"),
    (["chat", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--lora", "a=b"], 2, "--lora goes with --serve"),
    (["nano", "build", "--out", "{t}/m", "--preset", "huge"], 2, "'huge' is not one of"),
    (["model", "merge", "{t}", "--out", "{t}/m"], 2, "not a LoRA adapter folder"),
    (["data", "build", "{t}/none.yaml", "--out", "{t}/o"], 2, "config file not found"),
    (["data", "audit", "{t}/none.yaml", "--out", "{t}/o"], 2, "config file not found"),
    (["data", "inspect", "{t}/none"], 2, ""),
    (["kg", "show", "no-such-disease-xyz"], 2, ""),
    (["kg", "score", "--gold", "melanoma"], 2, "give exactly one of --response"),
    (["kg", "derive", "--sources", "{t}", "--out", "{t}/derived.json", "--force"], 2, "which this command reads"),
    (["kg", "export", "--out", str(ROOT / "src" / "dermvlm" / "knowledge" / "data" / "x.json"), "--force"], 2,
     "inside the graph's own data"),
]


def one_error(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_option_is_a_usage_error_with_status_2(command):
    r = runner.invoke(app, [*command.split(), "--no-such-option"])
    assert r.exit_code == 2 and "--no-such-option" in one_error(r)


@pytest.mark.parametrize(("argv", "code", "text"), FAILURES, ids=[" ".join(f[0][:2]) for f in FAILURES])
def test_expected_failures_exit_with_their_code_and_one_line(argv, code, text, tmp_path):
    r = runner.invoke(app, [a.replace("{t}", str(tmp_path)) for a in argv])
    assert r.exit_code == code and text in one_error(r)


def test_help_shows_flags_without_a_value_type():
    for command in (["train"], ["eval", "run"], ["data", "build"], []):
        r = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert r.exit_code == 0 and "<bool>" not in r.output, r.output
    train = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert "--fresh" in train and "--no-fresh" not in train


@pytest.mark.parametrize(("override", "text"), [
    ("stages.grpo.trl.learnin_rate=5e-6", "stages[2] (grpo).trl.learnin_rate: unknown GRPOConfig field"),
    ("stages.gpro.trl.learning_rate=5e-6", "stages has no item named 'gpro'"),
    ("model.lora.rr=16", "model.lora.rr: unknown key 'rr' (did you mean 'r'?)"),
    ("model.lora.r=many", "model.lora.r: Input should be a valid integer"),
    ("seed.x=1", "seed is a value (0), not a section"),
    ("stages.9.name=x", "index 9 is out of range"),
    ("model.lora", "expected KEY=VALUE"),
])
def test_set_overrides_are_validated_like_the_file(override, text):
    r = runner.invoke(app, ["config", "check", CONFIG, "--set", override])
    assert r.exit_code == 2 and text in one_error(r)


def test_set_overrides_reach_the_run(tmp_path):
    from dermvlm.config import load_config
    from dermvlm.training.grpo import grpo_config

    cfg = load_config(CONFIG, overrides=["stages.grpo.trl.learning_rate=5e-6", "model.lora.r=16",
                                         "stages.1.trl.max_steps=7", "logging=[mlflow, tensorboard]"])
    assert cfg.model.lora.r == 16 and cfg.stages[1].trl["max_steps"] == 7
    assert cfg.trackers() == ["mlflow", "tensorboard"]
    assert grpo_config(cfg.stages[2], tmp_path, 0, "x").learning_rate == 5e-6  # "5e-6": YAML's string, converted
    r = runner.invoke(app, ["config", "check", CONFIG, "--set", "stages.grpo.trl.learning_rate=5e-6"])
    assert r.exit_code == 0 and "ok (5 stages" in r.output


def test_an_interrupted_pipeline_exits_130_with_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dermvlm.cli", "pipeline", CONFIG, "--set",
                             f"output_dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "nano-cpu").exists():  # the run has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert (stdout + stderr).strip().splitlines()[-1] == "error: interrupted", stdout + stderr
    assert "Traceback" not in stderr


def test_demo_outside_the_project_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an installed package, or a shell in another folder: no configs/ here
    r = runner.invoke(app, ["demo"])
    assert r.exit_code == 2 and "run `dermvlm demo` from the project's root" in one_error(r)
