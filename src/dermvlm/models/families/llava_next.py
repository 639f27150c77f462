"""LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf, the LLaVA-1.6 line): CLIP ViT tower on "anyres" tiles (a base
view plus a grid of crops at one of the ``image_grid_pinpoints`` resolutions), two-layer MLP projector, a learned
``image_newline`` closing each row of tile features, Mistral language model.

``build_nano`` writes a tiny random-weight LLaVA-NeXT with the project's tokenizer (Mistral's special tokens plus
``<image>``) and TRL's LLaVA-NeXT training chat template (the real template plus ``{% generation %}`` markers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from dermvlm.models.families import Family

FAMILY = Family(
    name="llava_next",
    description="LLaVA-NeXT: CLIP tower on anyres tiles, MLP projector + image_newline, Mistral LM",
    model_types=("llava_next",),
    # in memory (transformers 5) and as the hub checkpoints store it (``language_model.model.*``,
    # ``language_model.lm_head.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``, ``image_newline``)
    vision_tower=("model.vision_tower.", "vision_tower."),
    projector=("model.multi_modal_projector.", "multi_modal_projector.", "model.image_newline", "image_newline"),
    language=("model.language_model.", "lm_head.", "language_model."),
    lm_lora_targets=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    vision_lora_targets=r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)",
    vision_modules=("model.vision_tower", "model.multi_modal_projector"),
    language_module="model.language_model",
)

SPECIAL_TOKENS = [  # Mistral's ids 0-2 are <unk>, <s>, </s>; llava-hf adds <image> (and <pad>) after the vocabulary
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<image>", "<pad>",
]


@dataclass(frozen=True)
class LlavaNextPreset:
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
    image_size: int = 32  # the CLIP tile (336 in LLaVA-NeXT)
    patch_size: int = 8  # 4x4 = 16 patches per tile (24x24 in LLaVA-NeXT)
    # anyres grids (height, width): at most 2x2 tiles plus the base view (LLaVA-NeXT: 336x672 ... 672x672)
    image_grid_pinpoints: tuple[tuple[int, int], ...] = field(default=((32, 64), (64, 32), (64, 64)))
    max_position_embeddings: int = 4096


PRESETS: dict[str, LlavaNextPreset] = {
    "nano": LlavaNextPreset(
        vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, vision_hidden_size=64, vision_layers=2, vision_heads=2,
        vision_intermediate_size=128,
    ),
}


def model_config(p: LlavaNextPreset, vocab_size: int, ids: dict[str, int]):
    """The ``LlavaNextConfig`` of preset ``p`` with ``vocab_size`` entries and the special tokens' ``ids``."""
    from transformers import LlavaNextConfig

    text_config = {
        "model_type": "mistral",
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.hidden_size // p.num_attention_heads,
        "max_position_embeddings": p.max_position_embeddings,
        "sliding_window": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": False,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
    }
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": p.vision_hidden_size,
        "intermediate_size": p.vision_intermediate_size,
        "num_hidden_layers": p.vision_layers,
        "num_attention_heads": p.vision_heads,
        "image_size": p.image_size,
        "patch_size": p.patch_size,
        "projection_dim": p.vision_hidden_size,
    }
    return LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=ids["<image>"],
        image_grid_pinpoints=[list(hw) for hw in p.image_grid_pinpoints],
        vision_feature_select_strategy="default",  # drop CLIP's CLS token
        vision_feature_layer=-2,
        image_seq_length=(p.image_size // p.patch_size) ** 2,
        tie_word_embeddings=False,
    )


def image_processor(p: LlavaNextPreset, min_pixels: int | None = None, max_pixels: int | None = None):
    """CLIP tiles of ``image_size``: a base view plus the crops of the best ``image_grid_pinpoints`` grid."""
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(
        size={"shortest_edge": p.image_size}, crop_size={"height": p.image_size, "width": p.image_size},
        image_grid_pinpoints=[list(hw) for hw in p.image_grid_pinpoints],
        # CLIP's statistics, as LLaVA-NeXT uses them
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
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
    """Build a tiny random-weight LLaVA-NeXT and save it as one HF folder at ``out`` (atomically).

    LLaVA-NeXT's tiles and grids are fixed by the preset, so pixel bounds and patch overrides are refused."""
    from transformers import LlavaNextProcessor

    from dermvlm.models.families.tiny import (
        check_preset,
        local_tokenizer,
        random_model,
        refuse,
        save_folder,
        trl_chat_template,
    )

    p: LlavaNextPreset = check_preset(preset, PRESETS, FAMILY.name)
    refuse(FAMILY.name, min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size)
    tokenizer = local_tokenizer(
        p.vocab_size, seed, SPECIAL_TOKENS, extra_terms,
        bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = model_config(p, len(tokenizer), ids)
    model = random_model(config, seed, eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"])
    processor = LlavaNextProcessor(
        image_processor=image_processor(p),
        tokenizer=tokenizer,
        patch_size=p.patch_size,
        vision_feature_select_strategy="default",
        chat_template=trl_chat_template("llava_next_training"),
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLS token the tower adds (and the "default" strategy drops)
    )
    tokenizer.chat_template = processor.chat_template
    info = {"family": FAMILY.name, "preset": preset, "seed": seed, **asdict(p)}
    return save_folder(out, model, processor, info, hub_key=hub_key)


def hub_key(name: str) -> str:
    """transformers 5 saves a fresh LLaVA-NeXT's CLIP tower as ``vision_tower.embeddings.*``; the hub checkpoints
    (and vLLM) have ``vision_tower.vision_model.embeddings.*``."""
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + name[len("vision_tower."):]
    return name
