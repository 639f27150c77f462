"""Resume that is proven: a full-parameter and a LoRA stage killed with SIGKILL mid-training, and the full-parameter
stage killed again after its last checkpoint (while its final model is saved), resume to the same weights and loss
curve as an uninterrupted run; a torn checkpoint is skipped for the previous one; retraining an
upstream stage retrains everything after it; `train` reuses a finished stage unless --fresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "dermvlm.cli"]


def two_stage_config(tmp_path: Path, name: str, pretrain_steps: int = 24, sft_steps: int = 20) -> Path:
    cfg = {"name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
           "model": {"nano": {"preset": "nano", "seed": 0}, "dtype": "float32",
                     "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
           "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml")}, "evaluate": [],
           "stages": [
               {"name": "pretrain", "kind": "sft", "use_lora": False, "data": ["open_diagnosis", "mcq"],
                "trl": {"max_steps": pretrain_steps, "learning_rate": 3e-3, "save_steps": 10, "logging_steps": 2}},
               {"name": "sft", "kind": "sft", "use_lora": True, "data": ["open_diagnosis"],
                "trl": {"max_steps": sft_steps, "learning_rate": 1e-3, "save_steps": 10, "logging_steps": 2}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def kill_at(cmd: list[str], marker: Path, timeout: float = 400) -> None:
    """Start ``cmd`` and SIGKILL its whole process group once ``marker`` exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"{cmd} ended before {marker} appeared"
        assert time.monotonic() < deadline, f"{marker} did not appear"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def losses(stage_dir: Path) -> list[float]:
    return [h["loss"] for h in json.loads((stage_dir / "log_history.json").read_text()) if "loss" in h]


@pytest.mark.slow
def test_kill9_full_and_lora_stages_resume_to_the_uninterrupted_run(tmp_path):
    straight = subprocess.run([*CLI, "pipeline", str(two_stage_config(tmp_path, "straight"))], capture_output=True,
                              text=True, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]
    cfg = two_stage_config(tmp_path, "killed")
    run = tmp_path / "runs" / "killed"
    kill_at([*CLI, "pipeline", str(cfg)], run / "pretrain" / "checkpoints" / "checkpoint-10" / "trainer_state.json")
    # after the last checkpoint (step 24 of 24): the resumed stage must not train a 25th step
    kill_at([*CLI, "pipeline", str(cfg)], run / "pretrain" / "checkpoints" / "checkpoint-24" / "trainer_state.json")
    assert not (run / "pretrain" / "done.json").exists()
    kill_at([*CLI, "pipeline", str(cfg)], run / "sft" / "checkpoints" / "checkpoint-10" / "trainer_state.json")
    resumed = subprocess.run([*CLI, "pipeline", str(cfg)], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pretrain_steps = [h["step"] for h in json.loads((run / "pretrain" / "log_history.json").read_text())]
    assert max(pretrain_steps) == 24, pretrain_steps
    for stage in ("pretrain", "sft"):
        a = load_file(str(tmp_path / "runs" / "straight" / stage / "model" / "model.safetensors"))
        b = load_file(str(run / stage / "model" / "model.safetensors"))
        assert set(a) == set(b)
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-4, (stage, worst)  # the resumed run continued from the checkpoint's weights
        assert losses(run / stage) == pytest.approx(losses(tmp_path / "runs" / "straight" / stage), abs=2e-3)


def test_torn_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, caplog):
    from dermvlm.training.resume import checkpoint_problem, last_checkpoint

    ckpts = tmp_path / "stage" / "checkpoints"
    for n in (10, 20, 30):
        d = ckpts / f"checkpoint-{n}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
        (d / "optimizer.pt").write_bytes(b"x")
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    (ckpts / "checkpoint-30" / "model.safetensors").write_bytes(b"\x00\x01torn")  # killed while writing
    (ckpts / "checkpoint-20" / "trainer_state.json").unlink()
    assert checkpoint_problem(ckpts / "checkpoint-10") is None
    assert "unreadable" in checkpoint_problem(ckpts / "checkpoint-30")
    with caplog.at_level("WARNING"):
        assert last_checkpoint(tmp_path / "stage") == str(ckpts / "checkpoint-10")
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-30" in caplog.text


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, nano_dir):
    from transformers import AutoModelForImageTextToText

    from dermvlm.config import ConfigError
    from dermvlm.models.nano import build_nano
    from dermvlm.training.resume import load_full_checkpoint

    other = build_nano(tmp_path / "micro", "micro", seed=0)
    model = AutoModelForImageTextToText.from_pretrained(str(nano_dir))
    with pytest.raises(ConfigError, match="does not match the model being trained"):
        load_full_checkpoint(model, other)
    load_full_checkpoint(model, nano_dir)  # its own layout loads, names converted as from_pretrained does


def test_retraining_an_upstream_stage_retrains_everything_after_it_and_train_resumes(tmp_path):
    from typer.testing import CliRunner

    from dermvlm.cli import app

    cfg = two_stage_config(tmp_path, "lineage", pretrain_steps=4, sft_steps=2)
    runner = CliRunner()
    first = runner.invoke(app, ["pipeline", str(cfg)])
    assert first.exit_code == 0, first.output
    run = tmp_path / "runs" / "lineage"
    stamp = {s: json.loads((run / s / "done.json").read_text())["run_id"] for s in ("pretrain", "sft")}
    # `train` of a finished stage reuses it (nothing deleted, nothing retrained) ...
    again = runner.invoke(app, ["train", "sft", str(cfg), "--stage", "pretrain"])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "pretrain" / "done.json").read_text())["run_id"] == stamp["pretrain"]
    # ... several stages of a kind need --stage ...
    ambiguous = runner.invoke(app, ["train", "sft", str(cfg)])
    assert ambiguous.exit_code == 2 and "2 sft stages (pretrain, sft); choose one with --stage" in ambiguous.output
    # ... --fresh retrains it, and the next pipeline retrains the stage after it (its start changed)
    fresh = runner.invoke(app, ["train", "sft", str(cfg), "--stage", "pretrain", "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((run / "pretrain" / "done.json").read_text())["run_id"] != stamp["pretrain"]
    assert json.loads((run / "sft" / "done.json").read_text())["run_id"] == stamp["sft"]  # not run by `train`
    rerun = runner.invoke(app, ["pipeline", str(cfg)])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((run / "sft" / "done.json").read_text())["run_id"] != stamp["sft"]
