"""Devices and launches without a GPU: what the DPO sampler's vLLM child sees and is sized by, what a sharded launch
refuses or changes before any model loads, that the GRPO++ reference adapter really moves, and the compute dtype a
GPU without bfloat16 gets."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from dermvlm.config import ConfigError, ModelSpec, load_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_vllm_sampling_is_sized_by_the_prompts_and_runs_on_this_ranks_gpu(nano_dir, recipe_data):
    from datasets import Dataset

    from dermvlm.models.loading import load_processor
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.vllm_sampling import child_environment, engine_limits

    rows = recipe_dataset(recipe_data, ["grpo_prompt"]).select(range(3))
    two = dict(rows[0])
    two["images"] = two["images"] * 2
    two["prompt"] = [{**m, "content": [{"type": "image", "text": None}, *m["content"]]} if m["role"] == "user"
                     else m for m in two["prompt"]]
    processor = load_processor(nano_dir)
    one = engine_limits(processor, rows, 64)
    both = engine_limits(processor, Dataset.from_list([*rows, two], features=rows.features), 64)
    assert one["limit_mm_per_prompt"] == {"image": 1} and both["limit_mm_per_prompt"] == {"image": 2}
    assert one["max_model_len"] > 64 and both["max_model_len"] > one["max_model_len"]  # the second image's tokens
    assert child_environment(1, "0,1,2,3")["CUDA_VISIBLE_DEVICES"] == "1"  # not GPU 0 for every rank
    assert child_environment(1, "4,5")["CUDA_VISIBLE_DEVICES"] == "5"
    assert "RANK" not in child_environment(0, "0") and "MASTER_PORT" not in child_environment(0, "0")


def test_config_check_refuses_the_vision_stage_under_zero3_and_fsdp(monkeypatch, tmp_path):
    from dermvlm.cli import app
    from dermvlm.pipeline import run_pipeline

    config = ROOT / "configs" / "nano-cpu.yaml"
    runner = CliRunner()
    for launch in ("zero3", "fsdp"):
        done = runner.invoke(app, ["config", "check", str(config), "--accelerate-config",
                                   str(ROOT / "configs" / "accelerate" / f"{launch}.yaml")])
        assert done.exit_code == 2
        assert "stages[0] (vision): the vision stage trains the tower beside an unwrapped language model" \
            in done.output and "accelerate launch --multi_gpu" in done.output
    done = runner.invoke(app, ["config", "check", str(config), "--accelerate-config",
                               str(ROOT / "configs" / "accelerate" / "zero2.yaml")])
    assert done.exit_code == 0, done.output
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as accelerate launch sets it: the run refuses at once
    cfg = load_config(config)
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "runs")})
    try:
        run_pipeline(cfg, str(config))
        raise AssertionError("the run did not refuse")
    except ConfigError as err:
        assert "cannot run under FSDP" in str(err)
    assert not (tmp_path / "runs").exists()


def test_4bit_weights_are_stored_in_the_model_dtype_when_sharded(monkeypatch, nano_dir):
    from dermvlm.models.loading import load_model, model_kwargs

    spec = ModelSpec(name_or_path=str(nano_dir), dtype="bfloat16",
                     quantization={"load_in_4bit": True, "on_cpu": "use"})
    assert model_kwargs(spec)["quantization_config"].bnb_4bit_quant_storage == torch.uint8  # one process: packed
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert model_kwargs(spec)["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    model, _ = load_model(spec, nano_dir)
    packed = [p for p in model.parameters() if p.__class__.__name__ == "Params4bit"]
    assert packed and {p.dtype for p in packed} == {torch.bfloat16}  # one floating dtype: FSDP/ZeRO-3 can shard it


def test_the_lora_reference_adapter_moves_towards_the_policy(nano_dir):
    from peft import get_peft_model
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from dermvlm.models.loading import load_model, lora_config
    from dermvlm.training.grpo.reference import add_ref_adapter, lora_ref_sync_callback

    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    model, _ = load_model(spec, nano_dir)
    peft = get_peft_model(model, lora_config(spec.lora, model))
    add_ref_adapter(peft)
    params = dict(peft.named_parameters())
    pairs = [(n, n.replace(".default.", ".ref.")) for n in params if ".default." in n]
    with torch.no_grad():  # a training step moved the policy's adapter
        for name, _ in pairs:
            params[name].add_(1.0)
    before = {ref: params[ref].detach().clone() for _, ref in pairs}
    callback = lora_ref_sync_callback(steps=2, alpha=0.25)
    state = TrainerState()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    state.global_step = 1  # not a sync step: nothing moves
    callback.on_step_end(args, state, TrainerControl(), model=peft)
    assert all(torch.equal(params[ref], before[ref]) for _, ref in pairs)
    state.global_step = 2
    callback.on_step_end(args, state, TrainerControl(), model=peft)
    for name, ref in pairs:
        assert torch.allclose(params[ref], 0.75 * before[ref] + 0.25 * params[name])
        assert not params[ref].requires_grad


def test_compute_dtype_follows_the_gpu():
    from dermvlm.devices import gpu_dtype

    assert gpu_dtype(bf16_supported=True) == "bfloat16" and gpu_dtype(bf16_supported=False) == "float16"


def test_the_fsdp_config_has_fsdp2_settings_only(monkeypatch, caplog):
    """accelerate reads the file's fsdp_config as FSDP_* variables; FSDP1-only keys under fsdp_version 2 draw its
    'not supported in FSDP2' / 'obsolete in FSDP2' warnings."""
    import logging

    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    for key, value in cfg["fsdp_config"].items():
        monkeypatch.setenv(key.upper(), str(value).lower() if isinstance(value, bool) else str(value))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.dataclasses"):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading
    assert not [r.getMessage() for r in caplog.records if "FSDP2" in r.getMessage()]
