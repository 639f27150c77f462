"""Gemma 3 (google/gemma-3-4b-it, google/medgemma-4b-it: MedGemma is this architecture): SigLIP vision tower at a
fixed square resolution, average-pooled to ``mm_tokens_per_image`` soft tokens by the projector, Gemma 3 LM with
interleaved sliding-window and full attention.

``build_nano`` writes a tiny random-weight Gemma 3 with the project's tokenizer (Gemma's special tokens) and TRL's
Gemma 3 training chat template (the real template plus ``{% generation %}`` markers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dermvlm.models.families import Family

FAMILY = Family(
    name="gemma3",
    description="Gemma 3 / MedGemma: SigLIP tower (fixed square input), pooled soft-token projector, Gemma 3 LM",
    model_types=("gemma3",),
    # in memory (transformers 5) and as the hub checkpoints store it (``language_model.model.*``,
    # ``vision_tower.vision_model.*``, ``multi_modal_projector.*``)
    vision_tower=("model.vision_tower.", "vision_tower."),
    projector=("model.multi_modal_projector.", "multi_modal_projector."),
    language=("model.language_model.", "lm_head.", "language_model."),
    lm_lora_targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    vision_lora_targets=r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)",
    vision_modules=("model.vision_tower", "model.multi_modal_projector"),
    language_module="model.language_model",
)

SPECIAL_TOKENS = [  # Gemma's ids 0-3 are <pad>, <eos>, <bos>, <unk>; the turn and image tokens follow here
    "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<image_soft_token>",
]
# Gemma's SentencePiece vocabulary holds newline runs as entries; vLLM's Gemma 3 processor looks them up by name
NEWLINE_TOKENS = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")


@dataclass(frozen=True)
class Gemma3Preset:
    """Sizes of one preset (``head_dim`` 32, which vLLM's CPU attention supports)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    image_size: int = 64  # the SigLIP input (896 in Gemma 3)
    patch_size: int = 8  # 8x8 = 64 patches (64x64 in Gemma 3)
    mm_tokens_per_image: int = 16  # 4x4 after 2x2 average pooling (256 in Gemma 3)
    sliding_window: int = 512
    max_position_embeddings: int = 4096
    rope_scaling_factor: float | None = None  # linear RoPE scaling of the full-attention layers (8 in Gemma 3 4B)
    init_std: float | None = None  # the random init's std (None: the config's 0.02)


PRESETS: dict[str, Gemma3Preset] = {
    "nano": Gemma3Preset(
        vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, intermediate_size=128, vision_hidden_size=64, vision_layers=2, vision_heads=2,
        vision_intermediate_size=128,
    ),
}


def model_config(p: Gemma3Preset, vocab_size: int, ids: dict[str, int]):
    """The ``Gemma3Config`` of preset ``p`` with ``vocab_size`` entries and the special tokens' ``ids``."""
    from transformers import Gemma3Config

    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "query_pre_attn_scalar": p.head_dim,
        "sliding_window": p.sliding_window,
        # Gemma 3 alternates five sliding-window layers with one full-attention layer; two layers show both
        "layer_types": ["sliding_attention"] * (p.num_hidden_layers - 1) + ["full_attention"],
        "max_position_embeddings": p.max_position_embeddings,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<pad>"],
    }
    if p.rope_scaling_factor:
        text_config["rope_parameters"] = {
            "full_attention": {"rope_type": "linear", "factor": p.rope_scaling_factor, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
    vision_config = {
        "hidden_size": p.vision_hidden_size,
        "intermediate_size": p.vision_intermediate_size,
        "num_hidden_layers": p.vision_layers,
        "num_attention_heads": p.vision_heads,
        "image_size": p.image_size,
        "patch_size": p.patch_size,
        "vision_use_head": False,
    }
    return Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=p.mm_tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=True,
    )


def image_processor(p: Gemma3Preset, min_pixels: int | None = None, max_pixels: int | None = None):
    """SigLIP's fixed square input (pixel bounds do not apply: every image becomes ``image_size`` squared)."""
    from transformers import Gemma3ImageProcessor

    return Gemma3ImageProcessor(size={"height": p.image_size, "width": p.image_size}, image_mean=[0.5, 0.5, 0.5],
                                image_std=[0.5, 0.5, 0.5], do_pan_and_scan=False)


def build_nano(
    out: str | Path,
    preset: str | Gemma3Preset = "nano",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_terms: list[str] | None = None,
    patch_size: int | None = None,
) -> Path:
    """Build a tiny random-weight Gemma 3 and save it as one HF folder at ``out`` (atomically).

    Gemma 3 resizes every image to one square size, so pixel bounds and patch overrides are refused."""
    from transformers import Gemma3Processor

    from dermvlm.models.families.tiny import (
        check_preset,
        local_tokenizer,
        preset_name,
        random_model,
        refuse,
        save_folder,
        trl_chat_template,
    )

    p: Gemma3Preset = check_preset(preset, PRESETS, FAMILY.name)
    refuse(FAMILY.name, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size)
    tokenizer = local_tokenizer(
        p.vocab_size, seed, SPECIAL_TOKENS, extra_terms, added_tokens=NEWLINE_TOKENS,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = model_config(p, len(tokenizer), ids)
    # Gemma 3 instruction models stop at <end_of_turn> as well as <eos> (their generation_config: [1, 106])
    model = random_model(config, seed, eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], pad_token_id=ids["<pad>"],
                         bos_token_id=ids["<bos>"], init_std=p.init_std)
    processor = Gemma3Processor(
        image_processor=image_processor(p),
        tokenizer=tokenizer,
        chat_template=trl_chat_template("gemma3_training"),
        image_seq_length=p.mm_tokens_per_image,
    )
    tokenizer.chat_template = processor.chat_template
    info = {"family": FAMILY.name, "preset": preset_name(preset), "seed": seed, **asdict(p)}
    return save_folder(out, model, processor, info, hub_key=hub_key)


def hub_key(name: str) -> str:
    """transformers 5 saves a fresh Gemma 3's SigLIP tower as ``vision_tower.embeddings.*``; the hub checkpoints
    (and vLLM) have ``vision_tower.vision_model.embeddings.*``."""
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + name[len("vision_tower."):]
    return name
