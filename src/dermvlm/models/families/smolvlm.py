"""SmolVLM (HuggingFaceTB/SmolVLM-256M/500M/2B-Instruct; ``model_type`` idefics3, SmolVLM2 is ``smolvlm``):
SigLIP-style tower on fixed-size tiles (the image split into a grid plus a global view), pixel-shuffle connector,
Llama-architecture SmolLM2 language model.

``build_nano`` writes a tiny random-weight Idefics3/SmolVLM with the project's tokenizer (SmolVLM's special and
tile tokens) and TRL's SmolVLM training chat template (the real template plus ``{% generation %}`` markers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dermvlm.models.families import Family

FAMILY = Family(
    name="smolvlm",
    description="SmolVLM / Idefics3: SigLIP tower on image tiles, pixel-shuffle connector, SmolLM2 (Llama) LM",
    model_types=("idefics3", "smolvlm"),
    # the hub checkpoints use the same layout as transformers 5 (``model.vision_model.*``, ``model.text_model.*``)
    vision_tower=("model.vision_model.",),
    projector=("model.connector.",),
    language=("model.text_model.", "lm_head."),
    lm_lora_targets=r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    vision_lora_targets=r".*vision_model.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)",
    vision_modules=("model.vision_model", "model.connector"),
    language_module="model.text_model",
)

TILE_TOKENS = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
SPECIAL_TOKENS = [  # SmolLM2's first ids, then the image tokens SmolVLM adds
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
    "<global-img>", *TILE_TOKENS,
]


@dataclass(frozen=True)
class SmolVLMPreset:
    """Sizes of one preset (``head_dim`` 32, which vLLM's CPU attention supports)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    tile_size: int = 64  # the tower's input (512 in SmolVLM)
    patch_size: int = 8  # 8x8 = 64 patches per tile
    scale_factor: int = 2  # pixel shuffle: 64 patches → 16 tokens per tile (SmolVLM: 4, 1024 → 64)
    longest_edge: int = 128  # images resize to at most 2x2 tiles (+ the global view)
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    init_std: float | None = None  # the random init's std (None: the config's 0.02)


PRESETS: dict[str, SmolVLMPreset] = {
    "nano": SmolVLMPreset(
        vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, vision_hidden_size=64, vision_layers=2, vision_heads=2, vision_intermediate_size=128,
    ),
}


def model_config(p: SmolVLMPreset, vocab_size: int, ids: dict[str, int]):
    """The ``Idefics3Config`` of preset ``p`` with ``vocab_size`` entries and the special tokens' ``ids``."""
    from transformers import Idefics3Config

    text_config = {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.hidden_size // p.num_attention_heads,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100_000.0},
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": p.tie_word_embeddings,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"],
        "pad_token_id": ids["<|im_end|>"],
    }
    vision_config = {
        "hidden_size": p.vision_hidden_size,
        "intermediate_size": p.vision_intermediate_size,
        "num_hidden_layers": p.vision_layers,
        "num_attention_heads": p.vision_heads,
        "image_size": p.tile_size,
        "patch_size": p.patch_size,
    }
    return Idefics3Config(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=p.scale_factor,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=p.tie_word_embeddings,
    )


def image_processor(p: SmolVLMPreset, min_pixels: int | None = None, max_pixels: int | None = None):
    """Tiles of ``tile_size`` plus a global view, the image first resized to at most ``longest_edge``."""
    from transformers import Idefics3ImageProcessor

    return Idefics3ImageProcessor(size={"longest_edge": p.longest_edge}, max_image_size={"longest_edge": p.tile_size},
                                  do_image_splitting=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build_nano(
    out: str | Path,
    preset: str | SmolVLMPreset = "nano",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_terms: list[str] | None = None,
    patch_size: int | None = None,
) -> Path:
    """Build a tiny random-weight SmolVLM (Idefics3) and save it as one HF folder at ``out`` (atomically).

    Its tiles have one fixed size, so pixel bounds and patch overrides are refused."""
    from transformers import Idefics3Processor

    from dermvlm.models.families.tiny import (
        check_preset,
        local_tokenizer,
        preset_name,
        random_model,
        refuse,
        save_folder,
        trl_chat_template,
    )

    p: SmolVLMPreset = check_preset(preset, PRESETS, FAMILY.name)
    refuse(FAMILY.name, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size)
    # SmolVLM-Instruct's tokenizer: bos <|im_start|>, eos <end_of_utterance>, pad <|im_end|>, unk <|endoftext|>
    tokenizer = local_tokenizer(p.vocab_size, seed, SPECIAL_TOKENS, extra_terms, bos_token="<|im_start|>",
                                eos_token="<end_of_utterance>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                extra_special_tokens={"image_token": "<image>"})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = model_config(p, len(tokenizer), ids)
    model = random_model(config, seed, eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|im_end|>"],
                         bos_token_id=ids["<|im_start|>"], init_std=p.init_std)
    image_seq_len = (p.tile_size // p.patch_size) ** 2 // p.scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor(p),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=trl_chat_template("smolvlm_training"),
    )
    tokenizer.chat_template = processor.chat_template
    info = {"family": FAMILY.name, "preset": preset_name(preset), "seed": seed, **asdict(p),
            "image_seq_len": image_seq_len}
    return save_folder(out, model, processor, info)
