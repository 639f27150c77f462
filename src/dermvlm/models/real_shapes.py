"""Real-shape builds: random-weight models with a published checkpoint's widths, heads, KV heads, vision geometry and
processor settings, but N text layers and N vision blocks and the local tokenizer's vocabulary.

Every value below is the checkpoint's own, read from its published ``config.json`` / ``preprocessor_config.json``
(URL beside each entry; where the hub file leaves a field to the transformers default, the comment says so). A
build goes through the family's own builder (``models/nano.py``, ``models/families/*``) with a preset object
holding these values, so it is the same code path as every tiny model: it loads with ``AutoProcessor`` +
``AutoModelForImageTextToText`` and serves with vLLM. ``full_config`` gives the whole checkpoint's config (every
layer, the real vocabulary) for counting parameters on the meta device without downloading weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dermvlm.io import atomic_write_text
from dermvlm.models.families.gemma3 import Gemma3Preset
from dermvlm.models.families.qwen3_vl import Qwen3VLPreset
from dermvlm.models.families.smolvlm import SmolVLMPreset
from dermvlm.models.nano import NanoPreset

LOCAL_VOCAB = 4096  # the local byte-level BPE a build trains (the checkpoint's vocabulary only counts in full_config)


@dataclass(frozen=True)
class RealShape:
    """One published checkpoint: its family, hub id, depth, vocabulary and the family preset of its widths."""

    name: str
    hub_id: str
    family: str
    text_layers: int
    vision_layers: int
    vocab_size: int  # the checkpoint's vocabulary (text_config.vocab_size)
    preset: Any  # the family's preset dataclass at full depth (vocab_size: the local tokenizer's target)
    sources: tuple[str, ...]
    gated: bool = False  # the hub asks users to accept a licence (``hf auth login`` first)


# Qwen2.5-VL: config.json gives the text widths and vision hidden_size 1280 / out_hidden_size; the other vision
# fields (depth 32, intermediate 3420, 16 heads, patch 14, merge 2, window 112, full attention in blocks 7/15/23/31)
# are Qwen2_5_VLVisionConfig's defaults, which the checkpoints rely on. preprocessor_config.json: min_pixels 3136,
# max_pixels 12845056, patch 14, merge 2, temporal patch 2, CLIP mean/std (Qwen2VLImageProcessor's defaults).
_QWEN25_VISION = {"vision_hidden_size": 1280, "vision_intermediate_size": 3420, "vision_heads": 16, "patch_size": 14,
                  "window_tokens": 4, "min_pixels": 3136, "max_pixels": 12845056,
                  "max_position_embeddings": 128000, "rope_theta": 1_000_000.0}
# Qwen3-VL: config.json's text_config and vision_config hold every field; preprocessor_config.json: size
# shortest_edge 65536, longest_edge 16777216, patch 16, merge 2, mean/std 0.5.
_QWEN3_VISION = {"patch_size": 16, "num_position_embeddings": 2304, "min_pixels": 65536, "max_pixels": 16777216,
                 "max_position_embeddings": 262144}

SHAPES: dict[str, RealShape] = {
    "qwen2.5-vl-7b": RealShape(
        name="qwen2.5-vl-7b", hub_id="Qwen/Qwen2.5-VL-7B-Instruct", family="qwen2_5_vl", text_layers=28,
        vision_layers=32, vocab_size=152064,
        preset=NanoPreset(vocab_size=LOCAL_VOCAB, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, intermediate_size=18944, vision_depth=32,
                          fullatt_block_indexes=[7, 15, 23, 31], tie_word_embeddings=False, **_QWEN25_VISION),
        sources=("https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json "
                 "(as copied in Qwen/Qwen2.5-VL-7B-Instruct-AWQ/config.json: hidden 3584, intermediate 18944, "
                 "28 layers, 28 heads, 4 KV heads, vocab 152064, untied, vision hidden 1280)",
                 "https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/preprocessor_config.json")),
    "qwen2.5-vl-3b": RealShape(
        name="qwen2.5-vl-3b", hub_id="Qwen/Qwen2.5-VL-3B-Instruct", family="qwen2_5_vl", text_layers=36,
        vision_layers=32, vocab_size=151936,
        preset=NanoPreset(vocab_size=LOCAL_VOCAB, hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                          num_key_value_heads=2, intermediate_size=11008, vision_depth=32,
                          fullatt_block_indexes=[7, 15, 23, 31], tie_word_embeddings=True, **_QWEN25_VISION),
        sources=("https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json (hidden 2048, "
                 "intermediate 11008, 36 layers, 16 heads, 2 KV heads, vocab 151936, tied, vision hidden 1280, "
                 "out_hidden_size 2048)",
                 "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/preprocessor_config.json")),
    "qwen3-vl-8b": RealShape(
        name="qwen3-vl-8b", hub_id="Qwen/Qwen3-VL-8B-Instruct", family="qwen3_vl", text_layers=36,
        vision_layers=27, vocab_size=151936,
        preset=Qwen3VLPreset(vocab_size=LOCAL_VOCAB, hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=128, intermediate_size=12288, vision_hidden_size=1152,
                             vision_depth=27, vision_heads=16, vision_intermediate_size=4304,
                             deepstack_visual_indexes=(8, 16, 24), tie_word_embeddings=False, **_QWEN3_VISION),
        sources=("https://huggingface.co/Qwen/Qwen3-VL-8B-Instruct/blob/main/config.json (text: hidden 4096, "
                 "intermediate 12288, 36 layers, 32 heads, 8 KV heads, head_dim 128, vocab 151936, untied; vision: "
                 "depth 27, hidden 1152, intermediate 4304, 16 heads, patch 16, deepstack 8/16/24)",
                 "https://huggingface.co/Qwen/Qwen3-VL-8B-Instruct/blob/main/preprocessor_config.json")),
    "qwen3-vl-4b": RealShape(
        name="qwen3-vl-4b", hub_id="Qwen/Qwen3-VL-4B-Instruct", family="qwen3_vl", text_layers=36,
        vision_layers=24, vocab_size=151936,
        preset=Qwen3VLPreset(vocab_size=LOCAL_VOCAB, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=128, intermediate_size=9728, vision_hidden_size=1024,
                             vision_depth=24, vision_heads=16, vision_intermediate_size=4096,
                             deepstack_visual_indexes=(5, 11, 17), tie_word_embeddings=True, **_QWEN3_VISION),
        sources=("https://huggingface.co/Qwen/Qwen3-VL-4B-Instruct/blob/main/config.json (as copied in "
                 "unsloth/Qwen3-VL-4B-Instruct: hidden 2560, intermediate 9728, 36 layers, 32 heads, 8 KV heads, "
                 "head_dim 128, tied; vision depth 24, hidden 1024, intermediate 4096, 16 heads, deepstack 5/11/17)",
                 "https://huggingface.co/Qwen/Qwen3-VL-4B-Instruct/blob/main/preprocessor_config.json")),
    "medgemma-4b": RealShape(
        name="medgemma-4b", hub_id="google/medgemma-4b-it", family="gemma3", text_layers=34, vision_layers=27,
        vocab_size=262208, gated=True,
        preset=Gemma3Preset(vocab_size=LOCAL_VOCAB, hidden_size=2560, num_hidden_layers=34, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=256, intermediate_size=10240, vision_hidden_size=1152,
                            vision_layers=27, vision_heads=16, vision_intermediate_size=4304, image_size=896,
                            patch_size=14, mm_tokens_per_image=256, sliding_window=1024,
                            max_position_embeddings=131072, rope_scaling_factor=8.0),
        sources=("https://huggingface.co/google/medgemma-4b-it/blob/main/config.json (Gemma 3 4B: text hidden "
                 "2560, intermediate 10240, 34 layers, sliding window 1024, linear RoPE factor 8, vocab 262208; "
                 "8 heads / 4 KV heads / head_dim 256 are Gemma3TextConfig's defaults; SigLIP so400m tower: hidden "
                 "1152, intermediate 4304, 27 layers, 16 heads, 896 px, patch 14; mm_tokens_per_image 256)",
                 "https://huggingface.co/google/medgemma-4b-it/blob/main/processor_config.json (image_seq_length "
                 "256)")),
    "smolvlm": RealShape(
        name="smolvlm", hub_id="HuggingFaceTB/SmolVLM-256M-Instruct", family="smolvlm", text_layers=30,
        vision_layers=12, vocab_size=49280,
        preset=SmolVLMPreset(vocab_size=LOCAL_VOCAB, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3, intermediate_size=1536, vision_hidden_size=768, vision_layers=12,
                             vision_heads=12, vision_intermediate_size=3072, tile_size=512, patch_size=16,
                             scale_factor=4, longest_edge=2048, max_position_embeddings=8192,
                             tie_word_embeddings=False),
        sources=("https://huggingface.co/HuggingFaceTB/SmolVLM-256M-Instruct/blob/main/config.json (text: hidden "
                 "576, intermediate 1536, 30 layers, 9 heads, 3 KV heads, head_dim 64; scale_factor 4; SigLIP "
                 "base-patch16-512 tower: hidden 768, 12 layers, 12 heads, intermediate 3072; an untied head: "
                 "model.safetensors is 513 MB in bf16, 256M parameters)",
                 "https://huggingface.co/HuggingFaceTB/SmolVLM-256M-Instruct/blob/main/preprocessor_config.json "
                 "(size longest_edge 2048, max_image_size 512, mean/std 0.5; processor_config image_seq_len 64; "
                 "generation_config eos_token_id 49279, the last of 49280 entries)")),
}


def get_shape(name: str) -> RealShape:
    if name not in SHAPES:
        from dermvlm.config import did_you_mean

        raise ValueError(f"unknown real shape {name!r}{did_you_mean(name, list(SHAPES))}; known: "
                         f"{', '.join(SHAPES)}")
    return SHAPES[name]


def shape_for_hub_id(hub_id: str) -> RealShape | None:
    """The registered shape of a hub checkpoint id (case-insensitive), or None."""
    return next((s for s in SHAPES.values() if s.hub_id.lower() == hub_id.lower()), None)


def _kept_indexes(indexes, depth: int) -> list[int]:
    """Block indexes (full attention, DeepStack taps) that exist in a ``depth``-block tower; the last block
    when none does, so a shallow build still has one."""
    kept = [i for i in indexes if i < depth]
    return kept or [depth - 1]


def preset_at_depth(shape: RealShape, layers: int, vision_layers: int | None = None) -> Any:
    """The shape's preset with ``layers`` text layers and ``vision_layers`` (default: ``layers``) vision blocks.

    The random init's std is 0.5 / hidden: at real widths with 0.02 a random model's next-token logits are
    dominated by the embedding of its last input token (by a factor of about std x hidden: 51 for MedGemma), so
    every sample repeats it and sampled answers never differ (DPO's policy pairs would be empty)."""
    if layers < 1:
        raise ValueError(f"layers must be at least 1 (got {layers})")
    v = vision_layers or layers
    p = replace(shape.preset, init_std=round(0.5 / shape.preset.hidden_size, 8))
    if shape.family == "qwen2_5_vl":
        return replace(p, num_hidden_layers=layers, vision_depth=v,
                       fullatt_block_indexes=_kept_indexes(p.fullatt_block_indexes, v))
    if shape.family == "qwen3_vl":
        return replace(p, num_hidden_layers=layers, vision_depth=v,
                       deepstack_visual_indexes=tuple(_kept_indexes(p.deepstack_visual_indexes, v)))
    return replace(p, num_hidden_layers=layers, vision_layers=v)


def build_like(out: str | Path, name: str, layers: int = 1, seed: int = 0, min_pixels: int | None = None,
               max_pixels: int | None = None) -> Path:
    """Build ``name``'s real shape with ``layers`` text layers and vision blocks through its family's builder;
    ``dermvlm_nano.json`` records the shape, the depth and the hub checkpoint it copies."""
    from dermvlm.models.nano import build_nano

    shape = get_shape(name)
    path = build_nano(out, preset_at_depth(shape, layers), seed, min_pixels, max_pixels, family=shape.family)
    info_file = path / "dermvlm_nano.json"
    info = json.loads(info_file.read_text())
    info.update(family=shape.family, like=name, layers=layers, hub_id=shape.hub_id)
    atomic_write_text(info_file, json.dumps(info, indent=2) + "\n")
    return path


def special_token_ids(family: str) -> dict[str, int]:
    """Ids for the family's special tokens in a vocabulary that starts with them (as the local tokenizers do)."""
    from dermvlm.models.families import special_tokens

    return {t: i for i, t in enumerate(special_tokens(family))}


def full_config(shape: RealShape, layers: int | None = None, vocab_size: int | None = None):
    """The transformers config of the whole checkpoint (``layers``: override the depth, text and vision alike;
    ``vocab_size``: override the real vocabulary), for meta-device parameter counts."""
    from dermvlm.models.families import config_builder

    preset = shape.preset if layers is None else preset_at_depth(shape, layers)
    return config_builder(shape.family)(preset, vocab_size or shape.vocab_size, special_token_ids(shape.family))
