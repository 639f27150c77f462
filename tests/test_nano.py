"""The nano model builder: a standard HF folder, deterministic, with the tokens and template the project needs."""

from __future__ import annotations

import json

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from dermvlm.models.nano import REASONING_TOKENS, build_nano


def test_build_reload_generate_with_real_image(nano_dir, isic_images):
    processor = AutoProcessor.from_pretrained(nano_dir)
    model = AutoModelForImageTextToText.from_pretrained(nano_dir)
    assert model.config.model_type == "qwen2_5_vl"
    info = json.loads((nano_dir / "dermvlm_nano.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) < 1_000_000
    image = Image.open(isic_images[0]).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Diagnosis?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert 1 <= n_image_tokens <= 16  # max_pixels 112*112 → at most 16 merged tokens
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6 or out[0, -1] == model.generation_config.eos_token_id


def test_reasoning_tags_are_single_tokens_and_vocabulary_is_dermatological(nano_dir):
    tok = AutoProcessor.from_pretrained(nano_dir).tokenizer
    for tag in REASONING_TOKENS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    for term in (" melanoma", " psoriasis", " erythematous", " plaque", " nevus", " carcinoma"):
        assert len(tok.encode(term, add_special_tokens=False)) == 1, term
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"


def test_chat_template_marks_only_assistant_turns(nano_dir):
    tok = AutoProcessor.from_pretrained(nano_dir).tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>melanoma</answer>"}]},
        {"role": "user", "content": "Is it dangerous?"},
        {"role": "assistant", "content": "Yes, see a dermatologist."},
    ]
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    kept = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m])
    assert kept == "<answer>melanoma</answer><|im_end|>Yes, see a dermatologist.<|im_end|>"
    text = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n")


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, nano_dir):
    again = build_nano(tmp_path / "again", "nano", seed=0)
    for f in sorted(p.name for p in nano_dir.iterdir()):
        assert (nano_dir / f).read_bytes() == (again / f).read_bytes(), f
    other = build_nano(tmp_path / "other", "nano", seed=1)
    a = AutoModelForImageTextToText.from_pretrained(nano_dir).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(other).state_dict()
    assert not torch.equal(a["model.language_model.layers.0.self_attn.q_proj.weight"],
                           b["model.language_model.layers.0.self_attn.q_proj.weight"])


def test_micro_preset_size_and_pixel_settings(tmp_path):
    out = build_nano(tmp_path / "micro", "micro", seed=0, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    info = json.loads((out / "dermvlm_nano.json").read_text())
    assert 5_000_000 <= info["parameters"] <= 20_000_000 and info["patch_size"] == 7
    proc = json.loads((out / "processor_config.json").read_text())
    assert proc["image_processor"]["size"] == {"shortest_edge": 3136, "longest_edge": 12544}
    assert proc["image_processor"]["patch_size"] == 7
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["patch_size"] == 7 and config["vision_config"]["window_size"] == 28


def test_bad_preset_and_pixel_bounds_fail_clearly(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        build_nano(tmp_path / "x", "tiny")
    with pytest.raises(ValueError, match="min_pixels"):
        build_nano(tmp_path / "y", "nano", min_pixels=200 * 200, max_pixels=100 * 100)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
