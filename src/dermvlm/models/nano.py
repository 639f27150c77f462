"""Build a tiny Qwen2.5-VL-architecture model from scratch: random weights, local tokenizer, standard HF folder.

Nothing is downloaded. The folder loads with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and with vLLM,
exactly like a real Qwen2.5-VL checkpoint, so every code path that serves or trains the 3B/7B model runs on it.
Presets: ``nano`` (< 1M parameters, tests) and ``micro`` (5-20M parameters, the learning benchmark).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from dermvlm.models.corpus import corpus

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]


@dataclass(frozen=True)
class NanoPreset:
    """Sizes of one preset.

    ``head_dim = hidden_size // num_attention_heads`` must be one that vLLM's CPU attention supports (32, 64,
    80, ...; 16 is refused at the first request); the mrope sections are derived to sum to head_dim/2.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vision_heads: int
    vision_intermediate_size: int
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    max_position_embeddings: int = 4096
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1])
    patch_size: int = 14
    window_tokens: int = 2  # window-attention window, in merged tokens per side (56 px at patch 14)
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    init_std: float | None = None  # the random init's std (None: the config's 0.02)


PRESETS: dict[str, NanoPreset] = {
    "nano": NanoPreset(
        vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, vision_hidden_size=64, vision_depth=2, vision_heads=4,
        vision_intermediate_size=128,
    ),
    # The vision geometry is the measured choice for 28 px DermaMNIST (benchmarks/results/geometry_sweep.json):
    # patch 7 on the native 28 px image, 16 patches, 4 visual tokens after the 2x2 merge.
    "micro": NanoPreset(
        vocab_size=4096, hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        intermediate_size=768, vision_hidden_size=192, vision_depth=4, vision_heads=6,
        vision_intermediate_size=512, min_pixels=28 * 28, max_pixels=28 * 28, fullatt_block_indexes=[1, 3],
        patch_size=7,
    ),
}


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen's 1:1.5:1.5 proportion."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def train_bpe(vocab_size: int, seed: int, special_tokens: list[str], extra_terms: list[str] | None = None):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on the dermatology corpus, ``special_tokens`` first
    (ids 0, 1, ...), then the reasoning tags as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed, extra_terms=extra_terms or ()), trainer=trainer)
    tok.add_tokens(REASONING_TOKENS)
    return tok


def train_tokenizer(vocab_size: int, seed: int, extra_terms: list[str] | None = None):
    """Train a byte-level BPE on the dermatology corpus and wrap it as a fast Qwen-style tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size, seed, SPECIAL_TOKENS, extra_terms)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def chat_template() -> str:
    """The Qwen-style chat template with image parts and ``{% generation %}`` markers."""
    return resources.files("dermvlm.models").joinpath("chat_template.jinja").read_text()


def model_config(p: NanoPreset, vocab_size: int, ids: dict[str, int], patch_size: int | None = None):
    """The ``Qwen2_5_VLConfig`` of preset ``p`` with ``vocab_size`` entries and the special tokens' ``ids``."""
    from transformers import Qwen2_5_VLConfig

    patch = patch_size or p.patch_size
    head_dim = p.hidden_size // p.num_attention_heads
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": p.rope_theta,
                            "mrope_section": _mrope_section(head_dim)},
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
        "patch_size": patch,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": patch * 2 * p.window_tokens,
        "fullatt_block_indexes": p.fullatt_block_indexes,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=p.tie_word_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def image_processor(p: NanoPreset, min_pixels: int | None = None, max_pixels: int | None = None,
                    patch_size: int | None = None):
    """Native resolution within the pixel bounds (``min/max_pixels`` override the preset's), 2x2 merge."""
    from transformers import Qwen2VLImageProcessor

    size = {"shortest_edge": min_pixels or p.min_pixels, "longest_edge": max_pixels or p.max_pixels}
    return Qwen2VLImageProcessor(size=size, patch_size=patch_size or p.patch_size, merge_size=2,
                                 temporal_patch_size=2)


def build_nano(
    out: str | Path,
    preset: str | NanoPreset = "nano",
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    extra_terms: list[str] | None = None,
    patch_size: int | None = None,
    family: str = "qwen2_5_vl",
) -> Path:
    """Build the model, tokenizer and processor and save them as one HF folder at ``out`` (atomically).

    ``patch_size`` overrides the preset's ViT patch (the resize factor is patch x 2, Qwen's 2x2 merge); the
    window-attention window keeps its size in merged tokens (``window_tokens``). Another ``family`` (see
    ``dermvlm.models.families``) builds that family's tiny model with its own presets instead."""
    if family != "qwen2_5_vl":
        from dermvlm.models.families import nano_builder

        return nano_builder(family)(out, preset, seed, min_pixels, max_pixels, extra_terms, patch_size)
    from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

    from dermvlm.models.families.tiny import preset_name, random_model, save_folder

    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p: NanoPreset = PRESETS[preset] if isinstance(preset, str) else preset
    patch = patch_size or p.patch_size
    if patch < 1:
        raise ValueError(f"patch_size must be a positive integer (got {patch})")
    min_px = min_pixels or p.min_pixels
    max_px = max_pixels or p.max_pixels
    if min_px > max_px:
        raise ValueError(f"min_pixels ({min_px}) must not exceed max_pixels ({max_px})")

    tokenizer = train_tokenizer(p.vocab_size, seed, extra_terms)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model = random_model(model_config(p, len(tokenizer), ids, patch), seed, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], init_std=p.init_std)

    size = {"shortest_edge": min_px, "longest_edge": max_px}
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor(p, min_px, max_px, patch),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        chat_template=chat_template(),
    )
    tokenizer.chat_template = processor.chat_template
    info = {"preset": preset_name(preset), "seed": seed, **asdict(p),
            "min_pixels": min_px, "max_pixels": max_px, "patch_size": patch}
    return save_folder(out, model, processor, info)
