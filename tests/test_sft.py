"""A real TRL SFT run on real images: the loss falls, the adapter merges, the merged model answers identically."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dermvlm.config import ModelSpec, make_stage
from dermvlm.models.loading import load_model
from dermvlm.recipes.text import OPEN_QUESTIONS
from dermvlm.training.common import recipe_dataset
from dermvlm.training.sft import run_sft


def greedy(model, processor, image_path: str, n: int = 12) -> list[int]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": OPEN_QUESTIONS[0]}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(image_path).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def test_lora_sft_20_steps_on_16_real_images_lowers_loss(tmp_path, nano_dir, recipe_data):
    ds = recipe_dataset(recipe_data, ["open_diagnosis"]).shuffle(seed=0).select(range(16))  # one row per image
    assert len({r["label"] for r in ds}) >= 4
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0})
    stage = make_stage(name="sft", use_lora=True, trl={"max_steps": 20, "learning_rate": 5e-3})
    result = run_sft(stage, spec, nano_dir, ds, tmp_path / "sft")
    losses = result.losses()
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    assert (result.adapter_dir / "adapter_config.json").is_file()
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert "language_model" in str(cfg["target_modules"]) and "visual" not in str(cfg["target_modules"])
    assert (result.model_dir / "model.safetensors").is_file()
    assert json.loads((tmp_path / "sft" / "log_history.json").read_text())[0]["loss"] == losses[0]


def test_merged_model_matches_adapter_model(trained_run, isic_images):
    from peft import PeftModel

    spec = trained_run["spec"]
    base, processor = load_model(spec, trained_run["base"])
    adapter_model = PeftModel.from_pretrained(base, str(trained_run["adapter"])).eval()
    merged, merged_proc = load_model(spec, trained_run["merged"])
    merged.eval()
    answered_tag = False
    for image in isic_images[:3]:
        a = greedy(adapter_model, processor, str(image))
        b = greedy(merged, merged_proc, str(image))
        assert a == b
        answered_tag |= processor.tokenizer.convert_tokens_to_ids("<think>") in a
    assert answered_tag  # the trained model writes the DermIQ format, so equality is not trivial


def test_full_finetune_changes_weights_and_saves_standalone(tmp_path, nano_dir, recipe_data):
    ds = recipe_dataset(recipe_data, ["open_diagnosis"]).select(range(8))
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32")
    result = run_sft(make_stage(name="full", use_lora=False, trl={"max_steps": 3}), spec, nano_dir, ds, tmp_path)
    assert result.adapter_dir is None
    before, _ = load_model(spec, nano_dir)
    after, _ = load_model(spec, result.model_dir)
    key = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(before.state_dict()[key], after.state_dict()[key])


def test_4bit_on_cpu_only_when_asked(nano_dir, caplog):
    from dermvlm.models.loading import model_kwargs

    plain = ModelSpec(name_or_path=str(nano_dir), quantization={"load_in_4bit": True})
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    with caplog.at_level("WARNING"):
        kw = model_kwargs(plain)
    assert "quantization_config" not in kw
    assert "CUDA is not available: loading without 4-bit quantization" in caplog.text
    forced = ModelSpec(name_or_path=str(nano_dir), quantization={"load_in_4bit": True, "on_cpu": "use"})
    model, _ = load_model(forced, nano_dir)
    assert getattr(model, "is_loaded_in_4bit", False)


def test_class_balanced_sft_draws_like_grpo_plus_and_trains_the_tower_at_its_own_rate(tmp_path, nano_dir,
                                                                                      recipe_data):
    from collections import Counter

    from trl import SFTTrainer

    from dermvlm.training.balanced import balanced_plan, balanced_trainer
    from dermvlm.training.grpo.sampler import class_shares
    from dermvlm.training.part_lr import part_lr_trainer
    from dermvlm.training.sft import sft_config

    ds = recipe_dataset(recipe_data, ["open_diagnosis"])
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32")
    stage = make_stage(name="sftb", use_lora=False, class_balanced=True, lr_scale={"vision": 0.1},
                       trl={"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 1e-3})
    args = sft_config(stage, tmp_path / "inside", 0)
    plan = balanced_plan(ds, args, stage.balance, 0, "test")
    drawn = Counter(ds[i]["label"] for i in plan)
    shares = class_shares(list(ds["label"]), 0.5)
    assert len(plan) == 32 and all(abs(drawn[c] / 32 - q) <= 1 / 32 + 1e-9 for c, q in shares.items())
    model, processor = load_model(spec, nano_dir)
    trainer = part_lr_trainer(balanced_trainer(SFTTrainer, plan), {"vision": 0.1})(
        model=model, args=args, train_dataset=ds, processing_class=processor)
    assert list(trainer._get_train_sampler()) == plan
    groups = trainer.create_optimizer().param_groups
    assert groups[0]["lr"] == 1e-3  # the rate the trainer logs as the stage's is the language model's, not the tower's
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    from dermvlm.models.families import family_for

    part = family_for(model).part_of
    named = [(n, lr_of[id(p)]) for n, p in model.named_parameters() if id(p) in lr_of]
    assert named and all(lr == pytest.approx(1e-4 if part(n) == "vision" else 1e-3) for n, lr in named)
    result = run_sft(stage, spec, nano_dir, ds, tmp_path / "run")  # the user's journey: the stage trains
    before, _ = load_model(spec, nano_dir)
    after, _ = load_model(spec, result.model_dir)
    key = next(k for k in before.state_dict() if ".visual." in k and k.endswith("qkv.weight"))
    assert not torch.equal(before.state_dict()[key], after.state_dict()[key])  # the tower trained, not frozen
