"""Every VLM family beyond Qwen2.5-VL: the tiny builder writes a folder that transformers loads and runs on a real
image, whose real chat template renders, whose parameters the registry assigns to parts, and that one real TRL
LoRA SFT step trains (then merges)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from dermvlm.models.families import FAMILIES, UnknownFamilyError, family_for, get_family, nano_presets

IMAGE = Path(__file__).resolve().parents[1] / "src" / "dermvlm" / "sample_data" / "isic" / "ISIC_0000013.jpg"
NEW_FAMILIES = ["qwen3_vl", "gemma3", "smolvlm", "llava_next"]
# what each family's chat template writes for an image part, and around an assistant turn
IMAGE_MARK = {"qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>", "gemma3": "<start_of_image>",
              "smolvlm": "<image>", "llava_next": "[INST] <image>\n"}
ASSISTANT_CUE = {"qwen3_vl": "<|im_start|>assistant\n", "gemma3": "<start_of_turn>model\n", "smolvlm": "Assistant:",
                 "llava_next": "[/INST] "}
MODEL_CLASS = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "gemma3": "Gemma3ForConditionalGeneration",
               "smolvlm": "Idefics3ForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}


def conversation(answer: str = "<think>A brown macule.</think><answer>melanocytic nevus</answer>") -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are a dermatology assistant."}]},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "What is the most likely diagnosis?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def built(request, tmp_path_factory) -> tuple[str, Path]:
    """One tiny model per family, built once for the module."""
    from dermvlm.models.nano import build_nano

    name = request.param
    return name, build_nano(tmp_path_factory.mktemp(name) / "model", "nano", seed=0, family=name)


@pytest.fixture(scope="module")
def loaded(built):
    from dermvlm.config import ModelSpec
    from dermvlm.models.loading import load_model

    name, path = built
    model, processor = load_model(ModelSpec(name_or_path=str(path), dtype="float32"), path)
    return name, path, model.eval(), processor


def test_build_writes_a_tiny_standard_folder(built):
    name, path = built
    for f in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"):
        assert (path / f).is_file(), f
    info = json.loads((path / "dermvlm_nano.json").read_text())
    assert info["family"] == name and info["preset"] == "nano"
    assert 100_000 < info["parameters"] < 2_000_000


def test_family_for_reads_config_json_and_the_loaded_model(loaded):
    name, path, model, _ = loaded
    assert family_for(path) is FAMILIES[name]
    assert family_for(model) is FAMILIES[name]
    assert type(model).__name__ == MODEL_CLASS[name]


def test_forward_pass_on_a_real_image(loaded):
    from dermvlm.config import ModelSpec
    from dermvlm.models.footprint import image_geometry, resolve_model

    name, _, model, processor = loaded
    text = processor.apply_chat_template(conversation()[:2], tokenize=False, add_generation_prompt=True)
    photo = Image.open(IMAGE).convert("RGB")
    inputs = processor(text=[text], images=[photo], return_tensors="pt")
    image_id = model.config.image_token_id
    tokens = int((inputs["input_ids"] == image_id).sum())
    assert tokens >= 4  # the processor expanded the image into soft tokens
    # dermvlm plan, from the family's config and image processor alone (no folder), counts the same tokens
    config, image_processor, _ = resolve_model(ModelSpec(nano={"family": name}))
    assert image_geometry(config, image_processor, photo.size).tokens == tokens
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    assert out.logits.shape[-1] >= len(processor.tokenizer)
    assert torch.isfinite(out.logits).all()
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_real_chat_template_renders_image_and_text(loaded):
    name, _, _, processor = loaded
    text = processor.apply_chat_template(conversation(), tokenize=False)
    assert IMAGE_MARK[name] in text and "What is the most likely diagnosis?" in text
    assert ASSISTANT_CUE[name] + (" " if name == "smolvlm" else "") + "<think>" in text
    assert "generation" not in text  # the {% generation %} markers are template syntax, not output
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<think>") != tokenizer.unk_token_id
    # assistant-only loss: the mask covers the answer and nothing of the question (text only: the processors
    # refuse image marks without images)
    rendered = tokenizer.apply_chat_template(conversation(), tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = rendered["input_ids"], rendered["assistant_masks"]
    answer = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert "<answer>melanocytic nevus</answer>" in answer and "diagnosis?" not in answer


def test_registry_prefixes_cover_every_parameter(loaded):
    name, path, model, _ = loaded
    family = FAMILIES[name]
    parts = {n: family.part_of(n) for n, _ in model.named_parameters()}
    assert not [n for n, part in parts.items() if part is None]
    assert set(parts.values()) == {"vision", "projector", "language"}
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:  # the names as saved on disk
        assert not [k for k in f.keys() if family.part_of(k) is None]  # noqa: SIM118 - safe_open has no __iter__
    assert model.get_submodule(family.language_module) is not None
    for module in family.vision_modules:
        assert model.get_submodule(module) is not None


def test_lora_targets_hit_only_their_part(loaded):
    import re

    name, _, model, _ = loaded
    family = FAMILIES[name]
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    lm = [n for n in linear if re.fullmatch(family.lm_lora_targets, n)]
    vision = [n for n in linear if re.fullmatch(family.vision_lora_targets, n)]
    assert len(lm) >= 7 * model.config.get_text_config().num_hidden_layers
    assert all(family.part_of(n + ".weight") == "language" for n in lm)
    assert vision and all(family.part_of(n + ".weight") == "vision" for n in vision)


def test_default_lora_config_wraps_the_familys_own_layers(loaded):
    """A config that names no target_modules gets the loaded model's family's layers (SmolVLM's ``text_model``,
    not Qwen's ``language_model``), and include_vision adds the tower."""
    from dermvlm.config import LoraSpec
    from dermvlm.models.loading import lora_config

    name, _, model, _ = loaded
    family = FAMILIES[name]
    plain = lora_config(LoraSpec(), model).target_modules
    both = lora_config(LoraSpec(include_vision=True), model).target_modules
    assert plain == family.lm_lora_targets
    import re

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    parts = {family.part_of(n + ".weight") for n in linear if re.fullmatch(both, n)}
    assert parts == {"language", "vision"}


def test_one_lora_sft_step_trains_and_merges(built, tmp_path):
    from datasets import Dataset

    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.training.sft import run_sft

    name, path = built
    family = get_family(name)
    image = Image.open(IMAGE).convert("RGB")
    rows = Dataset.from_list([
        {"images": [image], "messages": conversation()},
        {"images": [image.rotate(90)], "messages": conversation("<think>Irregular.</think><answer>melanoma</answer>")},
    ])
    spec = ModelSpec(name_or_path=str(path), dtype="float32",
                     lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": family.lm_lora_targets})
    stage = make_stage(name="sft", use_lora=True, trl={"max_steps": 1, "per_device_train_batch_size": 2})
    result = run_sft(stage, spec, path, rows, tmp_path / "sft")
    losses = result.losses()
    assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["target_modules"] == family.lm_lora_targets
    assert family_for(result.model_dir) is family  # the merged folder is still this family
    from safetensors import safe_open

    with safe_open(str(result.model_dir / "model.safetensors"), "pt") as f:
        saved = list(f.keys())
    assert not [k for k in saved if family.part_of(k) is None]
    if name in ("gemma3", "llava_next"):  # built in the hub layout, so trained and merged folders keep it (vLLM's)
        assert any(k.startswith("vision_tower.vision_model.") for k in saved)
        assert not any(k.startswith("vision_tower.embeddings.") for k in saved)


def test_unknown_family_is_refused_with_the_known_ones():
    from dermvlm.models.nano import build_nano

    with pytest.raises(UnknownFamilyError, match="known: gemma3, llava_next, qwen2_5_vl, qwen3_vl, smolvlm"):
        get_family("llava")
    with pytest.raises(UnknownFamilyError):
        build_nano("unused", family="llava")
    assert set(nano_presets("gemma3")) == {"nano"}


def test_cli_builds_a_family_and_refuses_an_unknown_one(tmp_path):
    from typer.testing import CliRunner

    from dermvlm.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "x"), "--family", "llava"])
    assert bad.exit_code == 2
    message = bad.output.strip()  # typer's runner mixes stderr into output
    assert "Invalid value for '--family'" in message  # typer checks the choices, listed in --help too
    assert "'llava' is not one of 'qwen2_5_vl', 'qwen3_vl', 'gemma3', 'smolvlm', 'llava_next'" in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    refused = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "y"), "--family", "gemma3",
                                  "--patch-size", "4"])
    assert refused.exit_code == 2 and "does not take patch_size" in refused.output
    ok = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "g"), "--family", "smolvlm"])
    assert ok.exit_code == 0, ok.output
    assert "built smolvlm nano model (" in ok.output and family_for(tmp_path / "g").name == "smolvlm"


def test_config_family_names_are_the_registry():
    import typing

    from dermvlm.config import FamilyName

    assert set(typing.get_args(FamilyName)) == set(FAMILIES)


def test_model_family_in_a_config_is_checked_against_the_checkpoint(built):
    from dermvlm.config import ModelSpec
    from dermvlm.models.loading import load_model

    name, path = built
    other = next(f for f in FAMILIES if f != name)
    with pytest.raises(ValueError, match=rf"model.family is {other}, but .* is a {name} checkpoint"):
        load_model(ModelSpec(name_or_path=str(path), family=other, dtype="float32"), path)
    model, _ = load_model(ModelSpec(name_or_path=str(path), family=name, dtype="float32"), path)
    assert family_for(model).name == name


STAGES = [{"name": "sft", "kind": "sft"}]


def test_pipeline_builds_the_configs_nano_family_once(tmp_path):
    from dermvlm.config import RunConfig
    from dermvlm.pipeline import base_model

    cfg = RunConfig.model_validate({"name": "fam", "output_dir": str(tmp_path), "data": {"recipe": "x.yaml"},
                                    "model": {"nano": {"family": "gemma3"}}, "stages": STAGES})
    path = base_model(cfg)
    assert family_for(path).name == "gemma3"
    stamp = (path / "config.json").stat().st_mtime_ns
    assert base_model(cfg) == path and (path / "config.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="only the 'nano' preset"):
        RunConfig.model_validate({"name": "f", "data": {"recipe": "x.yaml"}, "stages": STAGES,
                                  "model": {"nano": {"family": "smolvlm", "preset": "micro"}}})


def test_qlora_with_vllm_generation_is_refused_by_config_check(tmp_path):
    import yaml

    from dermvlm.config import ConfigError, load_config
    from dermvlm.pipeline import check_stages

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "qwen3-vl-4b-qlora.yaml").read_text())
    cfg["stages"][0]["trl"] |= {"use_vllm": True, "vllm_mode": "colocate"}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"stages\[0\] \(grpo\): 4-bit QLoRA with trl.use_vllm .*trl#4973"):
        check_stages(load_config(f), str(f))
    cfg.pop("model")
    cfg["model"] = {"name_or_path": "Qwen/Qwen3-VL-4B-Instruct", "family": "qwen3_vl"}  # bf16 LoRA: allowed
    f.write_text(yaml.safe_dump(cfg))
    check_stages(load_config(f), str(f))


def test_a_model_folder_without_a_processor_is_one_line(built, tmp_path):
    import shutil

    from dermvlm.config import ModelSpec
    from dermvlm.models.loading import PROCESSOR_FILES, load_model

    _, path = built
    bare = tmp_path / "bare"
    shutil.copytree(path, bare)
    for name in PROCESSOR_FILES:
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"bare: no processor \(no processor_config.json or preprocessor_config"):
        load_model(ModelSpec(name_or_path=str(bare), dtype="float32"), bare)


def test_a_chat_template_without_generation_markers_is_refused_unless_trl_knows_it(loaded):
    from dermvlm.config import ConfigError
    from dermvlm.models.families.tiny import trl_chat_template
    from dermvlm.training.sft import check_training_template

    name, path, _, processor = loaded
    check_training_template(processor, path, "stages[0].trl")  # the training template the build writes
    original = processor.chat_template
    try:
        processor.chat_template = trl_chat_template({"qwen3_vl": "qwen3_vl", "gemma3": "gemma3",
                                                     "smolvlm": "smolvlm", "llava_next": "llava_next"}[name])
        check_training_template(processor, path, "stages[0].trl")  # the real template: TRL has its training twin
        processor.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        with pytest.raises(ConfigError, match=r"no \{% generation %\} markers .* stages\[0\].trl: "
                                              r"\{assistant_only_loss: false\}"):
            check_training_template(processor, path, "stages[0].trl")
        processor.chat_template = None
        with pytest.raises(ConfigError, match="has no chat template"):
            check_training_template(processor, path, "stages[0].trl")
    finally:
        processor.chat_template = original
