"""Qwen3-VL (Qwen/Qwen3-VL-2B/4B/8B-Instruct): ViT with learned 2D position embeddings (patch 16, 2x2 merge),
DeepStack (features of early ViT blocks added into the first language layers), interleaved M-RoPE, Qwen3 LM.

``build_nano`` writes a tiny random-weight Qwen3-VL with the project's tokenizer (the Qwen special tokens of
``nano.py``) and TRL's Qwen3-VL training chat template (the real template plus ``{% generation %}`` markers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dermvlm.models.families import Family
from dermvlm.models.nano import SPECIAL_TOKENS

FAMILY = Family(
    name="qwen3_vl",
    description="Qwen3-VL: ViT with learned position embeddings (patch 16, 2x2 merge) + DeepStack mergers, Qwen3 LM",
    model_types=("qwen3_vl",),
    # the hub checkpoints already use the transformers 5 layout (``model.visual.*``, ``model.language_model.*``)
    vision_tower=("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks."),
    projector=("model.visual.merger.", "model.visual.deepstack_merger_list."),
    language=("model.language_model.", "lm_head."),
    lm_lora_targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    vision_lora_targets=r".*visual\.blocks.*\.(qkv|proj|linear_fc1|linear_fc2)",
    vision_modules=("model.visual",),
    language_module="model.language_model",
)


@dataclass(frozen=True)
class Qwen3VLPreset:
    """Sizes of one preset (``head_dim`` 32: vLLM's CPU attention supports it; the M-RoPE sections sum to 16)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vision_heads: int
    vision_intermediate_size: int
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    num_position_embeddings: int = 64  # an 8x8 grid of learned positions, interpolated to the image's grid
    patch_size: int = 16
    min_pixels: int = 64 * 64  # 4 merged tokens
    max_pixels: int = 128 * 128  # 16 merged tokens
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    init_std: float | None = None  # the random init's std (None: the config's 0.02)


PRESETS: dict[str, Qwen3VLPreset] = {
    "nano": Qwen3VLPreset(
        vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, intermediate_size=128, vision_hidden_size=64, vision_depth=2, vision_heads=2,
        vision_intermediate_size=128,
    ),
}


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's (time, height, width) split of head_dim/2 frequencies: 24:20:20 at head_dim 128."""
    half = head_dim // 2
    h = w = (half * 20) // 64
    return [half - h - w, h, w]


def model_config(p: Qwen3VLPreset, vocab_size: int, ids: dict[str, int], patch_size: int | None = None):
    """The ``Qwen3VLConfig`` of preset ``p`` with ``vocab_size`` entries and the special tokens' ``ids``."""
    from transformers import Qwen3VLConfig

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": _mrope_section(p.head_dim), "mrope_interleaved": True},
        "tie_word_embeddings": p.tie_word_embeddings,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": p.vision_depth,
        "hidden_size": p.vision_hidden_size,
        "intermediate_size": p.vision_intermediate_size,
        "num_heads": p.vision_heads,
        "out_hidden_size": p.hidden_size,
        "patch_size": patch_size or p.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": p.num_position_embeddings,
        "deepstack_visual_indexes": list(p.deepstack_visual_indexes),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=p.tie_word_embeddings,
    )


def image_processor(p: Qwen3VLPreset, min_pixels: int | None = None, max_pixels: int | None = None,
                    patch_size: int | None = None):
    """Native resolution within the pixel bounds, 2x2 merge; Qwen3-VL's mean/std 0.5 (Qwen2.5-VL: CLIP's)."""
    from transformers import Qwen2VLImageProcessor

    size = {"shortest_edge": min_pixels or p.min_pixels, "longest_edge": max_pixels or p.max_pixels}
    return Qwen2VLImageProcessor(size=size, patch_size=patch_size or p.patch_size, merge_size=2,
                                 temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build_nano(
    out: str | Path,
    preset: str | Qwen3VLPreset = "nano",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_terms: list[str] | None = None,
    patch_size: int | None = None,
) -> Path:
    """Build a tiny random-weight Qwen3-VL and save it as one HF folder at ``out`` (atomically)."""
    from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

    from dermvlm.models.families.tiny import (
        check_preset,
        preset_name,
        random_model,
        save_folder,
        trl_chat_template,
    )
    from dermvlm.models.nano import train_tokenizer

    p: Qwen3VLPreset = check_preset(preset, PRESETS, FAMILY.name)
    patch = patch_size or p.patch_size
    min_px, max_px = min_pixels or p.min_pixels, max_pixels or p.max_pixels
    if patch < 1 or min_px > max_px:
        raise ValueError(f"need patch_size >= 1 and min_pixels <= max_pixels (got {patch}, {min_px}, {max_px})")

    tokenizer = train_tokenizer(p.vocab_size, seed, extra_terms)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = model_config(p, len(tokenizer), ids, patch)
    model = random_model(config, seed, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<|endoftext|>"], init_std=p.init_std)

    size = {"shortest_edge": min_px, "longest_edge": max_px}
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    processor = Qwen3VLProcessor(
        image_processor=image_processor(p, min_px, max_px, patch),
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2,
                                              **norm),
        tokenizer=tokenizer,
        chat_template=trl_chat_template("qwen3_vl_training"),
    )
    tokenizer.chat_template = processor.chat_template
    info = {"family": FAMILY.name, "preset": preset_name(preset), "seed": seed, **asdict(p),
            "min_pixels": min_px, "max_pixels": max_px, "patch_size": patch}
    return save_folder(out, model, processor, info)
