"""Qwen2.5-VL (Qwen/Qwen2.5-VL-3B/7B-Instruct): native-resolution ViT with 2x2 token merging, M-RoPE."""

from __future__ import annotations

from pathlib import Path

from dermvlm.models.families import Family
from dermvlm.models.nano import PRESETS as PRESETS
from dermvlm.models.nano import SPECIAL_TOKENS as SPECIAL_TOKENS
from dermvlm.models.nano import image_processor as image_processor
from dermvlm.models.nano import model_config as model_config

FAMILY = Family(
    name="qwen2_5_vl",
    description="Qwen2.5-VL: window-attention ViT (patch 14, 2x2 merge into the projector), Qwen2.5 language model",
    model_types=("qwen2_5_vl",),
    # in memory (transformers 5) and as saved on disk (the hub layout: ``visual.*``, ``model.layers.*``)
    vision_tower=("model.visual.patch_embed.", "model.visual.blocks.", "model.visual.rotary_pos_emb.",
                  "visual.patch_embed.", "visual.blocks."),
    projector=("model.visual.merger.", "visual.merger."),
    language=("model.language_model.", "lm_head.", "model.layers.", "model.embed_tokens.", "model.norm."),
    lm_lora_targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    vision_lora_targets=r".*visual\.blocks.*\.(qkv|proj|gate_proj|up_proj|down_proj)",
    vision_modules=("model.visual",),
    language_module="model.language_model",
)


def build_nano(
    out: str | Path,
    preset: str = "nano",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_terms: list[str] | None = None,
    patch_size: int | None = None,
) -> Path:
    """The tiny Qwen2.5-VL of ``dermvlm.models.nano`` (the project's default model)."""
    from dermvlm.models.nano import build_nano as build

    return build(out, preset, seed, min_pixels, max_pixels, extra_terms, patch_size)
