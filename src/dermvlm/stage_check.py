"""The smallest run that touches every stage kind on a real-shape build: one or two steps each of the vision
stage, SFT, GRPO++ (curriculum on) and DPO on policy pairs, LoRA in 4-bit with gradient checkpointing, on
real-size photos. ``tests/test_real_shapes.py`` runs it on CPU and ``scripts/gpu_check.py`` on a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN_CPU_PIXELS = 448 * 448  # a CPU-sized pixel budget for Qwen's native-resolution processor (234 tokens)


def write_recipe(path: Path, source: dict[str, Any]) -> Path:
    """A recipe of real-size photos (stored up to 1024 px) with the kinds the stages read."""
    path.write_text(json.dumps({
        "name": "stage_check", "seed": 0, "image": {"max_side": 1024}, "split": {"val": 0.2, "test": 0.2},
        "sources": [source],
        "kinds": {"image_label": {}, "reasoning_trace": {}, "grpo_prompt": {"question": "open"}}}))
    return path


def stage_check_config(name: str, like: str, layers: int, recipe: Path, output_dir: Path, cpu: bool,
                       sampler: str = "auto") -> dict[str, Any]:
    """The run config (a mapping for ``RunConfig``). ``cpu``: float32, bitsandbytes 4-bit on CPU, a 448x448
    pixel budget for Qwen, 8 new tokens and no linear probe after the vision stage (the time goes to the stages);
    otherwise the dtype the GPU has, the processor's own budget, 32 new tokens and the probe."""
    gc = {"gradient_checkpointing": True}
    nano: dict[str, Any] = {"like": like, "layers": layers}
    if cpu and like.startswith("qwen"):
        nano["max_pixels"] = QWEN_CPU_PIXELS
    new = 8 if cpu else 32
    return {
        "name": name, "seed": 0, "output_dir": str(output_dir),
        "model": {"nano": nano, "dtype": "float32" if cpu else "auto", "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
                  "quantization": {"load_in_4bit": True, "on_cpu": "use", "compute_dtype": "bfloat16"}},
        "data": {"recipe": str(recipe)},
        "stages": [
            {"name": "vision", "kind": "vision", "probe": not cpu,
             "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "warmup_steps": 0, "logging_steps": 1, **gc}},
            {"name": "sft", "kind": "sft", "data": ["reasoning_trace"],
             "trl": {"max_steps": 1, "per_device_train_batch_size": 1, **gc}},
            {"name": "grpo", "kind": "grpo", "plus": {"curriculum": True, "iterations": 1,
                                                     "zero_variance_filter": False},
             "trl": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
                     "max_completion_length": new, **gc}},
            {"name": "dpo", "kind": "dpo", "pairs_from": "policy", "policy_samples": 2, "max_prompts": 1 if cpu else 2,
             "min_margin": 0.0, "sample_max_new_tokens": new, "sampler": sampler,
             "trl": {"max_steps": 1, "per_device_train_batch_size": 1, **gc}},
        ],
        "serve": {"dtype": "float32" if cpu else "auto", "max_model_len": 1024 if cpu else 2048},
    }
