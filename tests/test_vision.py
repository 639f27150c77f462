"""The vision stage on real images: it learns, trains exactly the parts its switches say, keeps the model folder
standard (head beside it), and a kill -9 resumes to the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dermvlm.config import ConfigError, make_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vision_splits(recipe_data):
    from dermvlm.pipeline import stage_dataset

    return stage_dataset(make_stage(name="v", kind="vision"), recipe_data, "test")


def _spec(nano_dir):
    from dermvlm.config import ModelSpec

    return ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 4, "alpha": 8, "dropout": 0.0})


def _changed(before: dict, after: dict) -> set[str]:
    from dermvlm.models.families import get_family

    family = get_family("qwen2_5_vl")
    return {family.part_of(k) or "other" for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, nano_dir, vision_splits):
    from dermvlm.training.vision import run_vision

    out = tmp_path_factory.mktemp("vision") / "full"
    stage = make_stage(name="vision", kind="vision", contrastive=True,
                       trl={"max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 2e-3, "warmup_steps": 0,
                            "save_steps": 15, "logging_steps": 5})
    return run_vision(stage, _spec(nano_dir), nano_dir, vision_splits, out, seed=0), out


def test_vision_stage_learns_and_changes_only_vision_and_projector(full_run, nano_dir, vision_splits):
    result, out = full_run
    losses = result.losses()
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2])  # the loss falls
    before = load_file(str(nano_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert set(before) == set(after)  # the same standard checkpoint layout, nothing added
    assert _changed(before, after) == {"vision", "projector"}
    head = json.loads((out / "head" / "head.json").read_text())
    assert head["classes"] == sorted(set(vision_splits["train"]["label"]))
    assert not any("head" in k for k in after)  # the temporary head is saved beside the model, not in it
    probe = result.extra["probe"]
    for split in ("val", "test"):
        assert 0.0 <= probe[split]["probe"]["balanced_accuracy"] <= 1.0 and probe[split]["probe"]["n"] > 0
    assert (out / "curves.png").is_file()


def test_vision_output_loads_and_generates_in_transformers(full_run, vision_splits):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    result, _ = full_run
    model = AutoModelForImageTextToText.from_pretrained(str(result.model_dir))
    processor = AutoProcessor.from_pretrained(str(result.model_dir))
    row = vision_splits["val"][0]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Diagnosis?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=row["images"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 or out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize(("tower", "changed"), [("frozen", {"projector"}), ("lora", {"vision", "projector"})])
def test_tower_switch_decides_what_trains(tower, changed, nano_dir, vision_splits, tmp_path):
    from dermvlm.training.vision import run_vision

    stage = make_stage(name="vision", kind="vision", tower=tower, probe=False, augment=None,
                       trl={"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 5e-3,
                            "save_steps": 100})
    result = run_vision(stage, _spec(nano_dir), nano_dir, vision_splits, tmp_path / tower, seed=0)
    before = load_file(str(nano_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert set(before) == set(after)  # LoRA is merged: no adapter keys in the saved model
    assert _changed(before, after) == changed
    if tower == "lora":  # only the tower's linear layers moved (merged low-rank updates), not its norms
        moved = [k for k in before if not torch.equal(before[k], after[k]) and ".blocks." in k]
        assert moved and all(k.endswith(".weight") and ("qkv" in k or "proj" in k) for k in moved)


def test_vision_stage_in_bfloat16_trains_and_probes_on_the_trainers_device(nano_dir, vision_splits, tmp_path):
    """A bfloat16 tower (as on a GPU) trains, describes classes and is probed: its features reach the float32 head,
    every forward the stage runs gets its inputs on the trainer's device, and the probe reads features on the host
    (a CUDA or bfloat16 tensor has no ``.numpy()``)."""
    from transformers import TrainerCallback

    from dermvlm.config import ModelSpec
    from dermvlm.training.vision import run_vision

    seen: dict[str, set] = {"inputs": set(), "params": set()}

    class RecordDevices(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            tower = next(iter(model.parts.values()))
            seen["trainer"] = args.device

            def hook(module, inputs):
                seen["inputs"].update(t.device for t in inputs if isinstance(t, torch.Tensor))
                seen["params"].add(next(module.parameters()).device)

            tower.register_forward_pre_hook(hook)

    stage = make_stage(name="vision", kind="vision", augment=None, contrastive=True,
                       trl={"max_steps": 2, "per_device_train_batch_size": 8, "save_steps": 100, "logging_steps": 1})
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="bfloat16")
    result = run_vision(stage, spec, nano_dir, vision_splits, tmp_path / "bf16", seed=0, callbacks=[RecordDevices()])
    assert result.extra["probe"]["val"]["probe"]["n"] > 0 and len(result.losses()) >= 1
    assert seen["inputs"] == seen["params"] == {seen["trainer"]}
    saved = load_file(str(result.model_dir / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}


def test_augmentation_is_seeded_and_keeps_size():
    from dermvlm.config import AugmentSpec
    from dermvlm.training.augment import augment

    img = (torch.arange(3 * 28 * 28) % 251).to(torch.uint8).reshape(3, 28, 28)
    spec = AugmentSpec()
    a = augment(img, spec, torch.Generator().manual_seed(5))
    b = augment(img, spec, torch.Generator().manual_seed(5))
    c = augment(img, spec, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and a.dtype == torch.uint8


def test_vision_stage_needs_two_classes_and_an_objective(nano_dir, vision_splits, tmp_path):
    from dermvlm.training.vision import run_vision

    with pytest.raises(ValueError, match=r"enable 'supervised', 'contrastive' \(or both\) or 'self_supervised'"):
        make_stage(name="v", kind="vision", supervised=False)
    one = vision_splits["train"].filter(lambda r: r["label"] == vision_splits["train"][0]["label"])
    with pytest.raises(ConfigError, match="at least two classes"):
        run_vision(make_stage(name="v", kind="vision"), _spec(nano_dir), nano_dir, {"train": one}, tmp_path / "v")


def _vision_config(tmp_path: Path, name: str) -> Path:
    cfg = {"name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
           "model": {"nano": {"preset": "nano", "seed": 0}, "dtype": "float32"},
           "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml")}, "evaluate": [],
           "stages": [{"name": "vision", "kind": "vision", "probe": False,
                       "trl": {"max_steps": 40, "per_device_train_batch_size": 8, "save_steps": 10,
                               "logging_steps": 5}}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_vision_stage_kill9_resumes_to_the_uninterrupted_weights(tmp_path):
    cmd = [sys.executable, "-m", "dermvlm.cli", "pipeline"]
    straight = subprocess.run([*cmd, str(_vision_config(tmp_path, "straight"))], capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed_cfg = _vision_config(tmp_path, "killed")
    run = tmp_path / "runs" / "killed" / "vision"
    proc = subprocess.Popen([*cmd, str(killed_cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "checkpoint-20" / "trainer_state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stage ended before its checkpoints"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "done.json").exists()
    resumed = subprocess.run([*cmd, str(killed_cfg)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "runs" / "straight" / "vision" / "model" / "model.safetensors"))
    b = load_file(str(run / "model" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    la = [h["loss"] for h in json.loads((tmp_path / "runs" / "straight" / "vision" / "log_history.json").read_text())
          if "loss" in h]
    lb = [h["loss"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]
    assert lb == pytest.approx(la, abs=1e-4)  # the same loss curve, the resumed part included


def test_align_stage_trains_the_projector_only(nano_dir, recipe_data, tmp_path):
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.sft import run_sft

    captions = recipe_dataset(recipe_data, ["caption"])
    text = captions[0]["messages"][-1]["content"][0]["text"]
    assert text.startswith("A ") and "image of" in text  # "A dermoscopic image of melanoma: ..."
    stage = make_stage(name="align", kind="align", data=["caption"],
                       trl={"max_steps": 3, "learning_rate": 1e-3, "per_device_train_batch_size": 4})
    result = run_sft(stage, _spec(nano_dir), nano_dir, captions, tmp_path / "align")
    before = load_file(str(nano_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert _changed(before, after) == {"projector"}
