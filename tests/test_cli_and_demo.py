"""The command line: version, help, nano build, merge; and the demo end to end (train → vLLM → one answer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dermvlm import __version__
from dermvlm.cli import app

ROOT = Path(__file__).resolve().parents[1]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


runner = CliRunner()


def test_version_and_help_list_only_working_commands():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"dermvlm {__version__}"
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    listed = {line.split()[1] for line in r.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert {"serve", "demo", "nano", "model", "config"} <= listed
    assert {"pipeline", "train", "kg", "data", "eval"} <= listed
    assert "bench" not in listed  # registered only once it works


def test_nano_build_and_merge_commands(tmp_path, trained_run):
    r = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "m"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "built nano model (" in r.output
    assert json.loads((tmp_path / "m" / "dermvlm_nano.json").read_text())["seed"] == 3
    r = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "n"), "--preset", "huge"])
    assert r.exit_code == 2 and "'huge' is not one of 'nano', 'micro'" in r.output
    r = runner.invoke(app, ["model", "merge", str(trained_run["adapter"]), "--out", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    assert "(--base-weights as-trained: the full-precision base it was trained on)" in r.output  # a plain LoRA
    assert "note: " not in r.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "processor_config.json").is_file()
    r = runner.invoke(app, ["model", "merge", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not a LoRA adapter folder" in r.output


def small_config(tmp_path: Path, steps: dict[str, int] | None = None, evaluate: bool = False, **trl: dict) -> Path:
    """configs/nano-cpu.yaml with fewer steps per stage (and extra TRL settings per stage name); its evaluation
    suites only when ``evaluate``."""
    steps = {"vision": 10, "pretrain": 100, "grpo": 2, "sft": 4, "dpo": 2, **(steps or {})}
    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["data"]["recipe"] = str(ROOT / "data_recipes" / "sample.yaml")
    cfg["evaluate"] = [str(ROOT / p) for p in cfg.get("evaluate", [])] if evaluate else []
    for stage in cfg["stages"]:
        stage["trl"]["max_steps"] = steps[stage["name"]]
        stage["trl"].update(trl.get(stage["name"], {}))
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_resumes_finished_stages_and_reruns_changed_ones(tmp_path):
    from dermvlm.config import load_config
    from dermvlm.pipeline import run_pipeline

    cfg = load_config(small_config(tmp_path, {"vision": 2, "pretrain": 4, "grpo": 1, "sft": 2, "dpo": 1}))
    before = live_training_objects()
    final = run_pipeline(cfg)
    assert live_training_objects() <= before  # no stage's model, trainer or optimizer outlives it
    run = Path(cfg.output_dir) / cfg.name
    names = ("vision", "pretrain", "grpo", "sft", "dpo")
    assert final == run / "dpo" / "model" and (final / "README.md").is_file()
    from huggingface_hub import ModelCard

    meta = ModelCard.load(final / "README.md").data.to_dict()
    assert meta["pipeline_tag"] == "image-text-to-text" and "base_model" not in meta  # built from scratch
    stamps = {s: (run / s / "done.json").stat().st_mtime_ns for s in names}
    run_pipeline(cfg)
    assert stamps == {s: (run / s / "done.json").stat().st_mtime_ns for s in names}
    cfg.stages[3].trl["max_steps"] = 3
    run_pipeline(cfg)
    assert [(run / s / "done.json").stat().st_mtime_ns == stamps[s] for s in names] == [True, True, True, False,
                                                                                         False]
    assert json.loads((run / "sft" / "done.json").read_text())["steps"] == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(names) and manifest["final_model"] == str(run / "dpo" / "model")
    assert manifest["versions"]["trl"] and len(manifest["inputs"]["data_key"]) == 16
    assert manifest["versions"]["dermvlm_commit"].startswith(head_commit())  # the code it ran from
    assert all((run / s / "curves.png").is_file() for s in names)
    for stage in manifest["stages"].values():  # GPU peaks beside the CPU's; none without a GPU
        assert stage["peak_rss_mb"] > 0 and stage["gpu_peak_allocated_mb"] is stage["gpu_peak_reserved_mb"] is None


def live_training_objects() -> set[int]:
    """Models, trainers and optimizers alive in this process (after a garbage collection)."""
    import gc

    import torch
    from transformers import PreTrainedModel, Trainer

    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, PreTrainedModel | Trainer | torch.optim.Optimizer)}


@pytest.mark.vllm
def test_demo_prints_an_answer_from_the_served_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dermvlm.cli", "demo", str(small_config(tmp_path, evaluate=True))],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answer = next(line for line in proc.stdout.splitlines() if line.startswith("answer:"))
    assert len(answer.removeprefix("answer:").strip()) > 10  # a tiny model trained for seconds: any real text
    assert "vLLM ready and evaluated in" in proc.stdout
    report = next(line for line in proc.stdout.splitlines() if line.startswith("report:")).split()[-1]
    assert (tmp_path / report).is_file() and "| mcq |" in (tmp_path / report).read_text()


def test_model_card_names_a_hub_base_model_only(tmp_path):
    from dermvlm.pipeline import is_hub_id

    assert is_hub_id("Qwen/Qwen2.5-VL-3B-Instruct") and is_hub_id("google/medgemma-4b-it")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("runs/x/model/extra") and not is_hub_id(None)
