"""Real-shape builds and the planner.

The cheap tests check the registry of published shapes (parameter counts of the whole checkpoints, from their
configs on the meta device, against the counts their hub pages publish), ``dermvlm nano build --like``, ``dermvlm
plan`` and ``config check --gpu-memory``. The ``realshape`` tests walk a user's first run at a real checkpoint's
widths on CPU: ``dermvlm pipeline`` on a 1-layer real-shape build with bitsandbytes 4-bit
(``quantization.on_cpu: use``) and gradient checkpointing, one step of every stage kind (vision, SFT, GRPO++ with
the curriculum, DPO on policy pairs) on real-size dermoscopy photos, each LoRA stage merged, then the final model
served by vLLM and asked about a photo. They need ``../shared/data/isic_cc0`` (1024x768 ISIC photos).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Parameters each hub page publishes (the safetensors total): a registry value wrong anywhere changes the count.
PUBLISHED = {"qwen2.5-vl-7b": 8.29e9, "qwen2.5-vl-3b": 3.75e9, "qwen3-vl-8b": 8.77e9, "qwen3-vl-4b": 4.44e9,
             "medgemma-4b": 4.30e9, "smolvlm": 0.256e9}
QUESTION = "What is the most likely diagnosis of this skin lesion?"


def test_registry_names_match_the_config_literal():
    import typing

    from dermvlm.config import RealShapeName
    from dermvlm.models.real_shapes import SHAPES

    assert list(typing.get_args(RealShapeName)) == list(SHAPES)


def test_whole_checkpoint_parameter_counts_match_the_published_ones():
    from dermvlm.config import ModelSpec
    from dermvlm.models.footprint import footprint, resolve_model
    from dermvlm.models.real_shapes import SHAPES

    for name, published in PUBLISHED.items():
        config, _, source = resolve_model(ModelSpec(name_or_path=SHAPES[name].hub_id))
        total = footprint(config, source).total
        assert abs(total - published) / published < 0.005, (name, total)


def test_an_unknown_hub_id_is_refused_in_one_line(tmp_path):
    from dermvlm.config import ConfigError, RunConfig, validate
    from dermvlm.plan import plan_run

    cfg = validate({"name": "x", "model": {"name_or_path": "someone/Unknown-VL-9B"},
                    "stages": [{"name": "sft", "kind": "sft"}]}, RunConfig)
    with pytest.raises(ConfigError, match=r"someone/Unknown-VL-9B is not a local folder.*hf download") as err:
        plan_run(cfg)
    assert "\n" not in str(err.value)


def test_nano_build_like_refuses_family_and_builds_the_shape(tmp_path):
    from typer.testing import CliRunner

    from dermvlm.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "x"), "--like", "smolvlm",
                                  "--family", "gemma3"])
    assert refused.exit_code == 2 and "--family: leave it out with --like" in refused.output
    built = runner.invoke(app, ["nano", "build", "--out", str(tmp_path / "s"), "--like", "smolvlm", "--layers", "2"])
    assert built.exit_code == 0, built.output
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    # SmolVLM-256M's widths, heads and tiles, two layers and two vision blocks
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"],
            text["num_key_value_heads"], text["num_hidden_layers"]) == (576, 1536, 9, 3, 2)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["image_size"], vision["patch_size"],
            config["scale_factor"]) == (768, 2, 512, 16, 4)
    info = json.loads((tmp_path / "s" / "dermvlm_nano.json").read_text())
    assert (info["like"], info["layers"], info["hub_id"]) == ("smolvlm", 2, "HuggingFaceTB/SmolVLM-256M-Instruct")


def test_plan_json_and_config_check_refuses_what_does_not_fit(shared_data):  # the 7B config reads isic_cc0
    from typer.testing import CliRunner

    from dermvlm.cli import app

    runner = CliRunner()
    cfg = str(ROOT / "configs" / "qwen2.5-vl-7b-qlora.yaml")
    out = runner.invoke(app, ["plan", cfg, "--json", "--gpus", "2", "--gpu-memory", "80GiB"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["parameters"] > 8e9 and [s["name"] for s in plan["stages"]] == ["grpo", "sft", "dpo"]
    sft = next(s for s in plan["stages"] if s["name"] == "sft")
    one = sft["gib"]["one GPU"]
    assert set(one) == {"weights", "trainable_state", "activations", "vllm", "overhead", "total"}
    assert 4.5 < one["weights"] < 6.5  # 7.2B 4-bit linears + 1.1B bf16 embeddings, head, norms, convolution
    assert sft["activations_gib_other_checkpointing"] > one["activations"]  # the config checkpoints
    assert sft["gib"]["ZeRO-2"]["trainable_state"] < one["trainable_state"]  # sharded over 2 GPUs
    refused = runner.invoke(app, ["config", "check", cfg, "--gpu-memory", "4GiB"])
    assert refused.exit_code == 2
    assert refused.output.startswith("error: ") and "stages[0] (grpo): needs about" in refused.output
    assert runner.invoke(app, ["config", "check", cfg, "--gpu-memory", "80GiB"]).exit_code == 0


def test_plan_reads_the_gpu_peak_a_finished_run_recorded(tmp_path):
    from dermvlm.config import RunConfig, load_config
    from dermvlm.plan import plan_run

    data = load_config(ROOT / "configs" / "nano-cpu.yaml").model_dump()
    cfg = RunConfig.model_validate({**data, "output_dir": str(tmp_path), "data": {
        "recipe": str(ROOT / "data_recipes" / "sample.yaml")}})
    (tmp_path / cfg.name).mkdir()
    (tmp_path / cfg.name / "manifest.json").write_text(json.dumps({"stages": {"sft": {"gpu_peak_allocated_mb": 3072,
                                                                                  "gpu_peak_reserved_mb": 4096}}}))
    _, plans = plan_run(cfg)
    assert {p.name: p.measured_gpu_gib for p in plans}["sft"] == 3.0
    assert {p.name for p in plans} == {s.name for s in cfg.stages}


# ------------------------------------------------------------------------------------------ real shapes on CPU


@pytest.fixture(scope="module")
def realsize_recipe(shared_data, tmp_path_factory) -> Path:
    """Full-size ISIC photos (1024x768 and larger, stored up to 1024 px): a few per split."""
    from dermvlm.stage_check import write_recipe

    return write_recipe(tmp_path_factory.mktemp("realsize") / "recipe.yaml",
                        {"name": "isic", "root": str(shared_data / "isic_cc0"), "limit_per_split": 6})


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.realshape
@pytest.mark.parametrize("like", ["qwen2.5-vl-3b", "medgemma-4b"])
def test_every_stage_in_4bit_at_real_widths_then_served(like, realsize_recipe, isic_images, tmp_path, caplog):
    from openai import OpenAI
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    from dermvlm.config import RunConfig, validate
    from dermvlm.models.real_shapes import SHAPES
    from dermvlm.pipeline import run_pipeline
    from dermvlm.plan import Hardware, plan_run
    from dermvlm.serving.client import ask_about_image
    from dermvlm.serving.server import ServeOptions, VLLMServer
    from dermvlm.stage_check import stage_check_config

    cfg = validate(stage_check_config(f"rs-{like}", like, 1, realsize_recipe, tmp_path / "runs", cpu=True),
                   RunConfig)
    with caplog.at_level(logging.INFO, logger="dermvlm.models.loading"):
        final = run_pipeline(cfg, "realshape")
    run = tmp_path / "runs" / cfg.name
    manifest = json.loads((run / "manifest.json").read_text())
    assert {name: s["steps"] for name, s in manifest["stages"].items()} == {
        "vision": 1, "sft": 1, "grpo": 1, "dpo": 1}
    # the LoRA stages loaded bitsandbytes 4-bit (sft, grpo, dpo's sampler and trainer)
    assert sum("4-bit requested on CPU" in r.message for r in caplog.records) >= 4
    assert json.loads((run / "dpo" / "pairs_stats.json").read_text())["pairs"] >= 1
    # the served model is the real shape: widths of the checkpoint, one layer, the merged LoRA stages
    shape, built = SHAPES[like].preset, AutoConfig.from_pretrained(final).get_text_config()
    assert (built.hidden_size, built.intermediate_size, built.num_attention_heads, built.num_key_value_heads,
            built.num_hidden_layers) == (shape.hidden_size, shape.intermediate_size, shape.num_attention_heads,
                                         shape.num_key_value_heads, 1)
    assert (final / "model.safetensors").is_file()

    # tokens per image: the planner, the HF processor and the vLLM server agree on a real-size photo
    _, plans = plan_run(cfg, Hardware(), "realshape", image_size=(1024, 768), gpu=False)
    photo = next(p for p in isic_images if Image.open(p).size == (1024, 768))
    processor = AutoProcessor.from_pretrained(final)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(photo).convert("RGB")], return_tensors="pt")
    top = AutoConfig.from_pretrained(final)
    image_token = getattr(top, "image_token_id", None) or top.image_token_index
    assert int((inputs["input_ids"] == image_token).sum()) == plans[0].tokens_per_image
    options = ServeOptions(model=str(final), served_model_name="rs", dtype="float32", max_model_len=1024,
                           api_key="rs", log_file=str(tmp_path / "serve.log"))
    with VLLMServer(options) as server:
        reply = ask_about_image(OpenAI(base_url=server.base_url, api_key="rs"), "rs", photo, QUESTION,
                                max_tokens=8)
    assert reply.choices[0].message.content  # random weights: some text, not a diagnosis
    assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]

    # what it cost, for the record (the README's numbers): seconds and peak RSS per stage
    print(f"\n{like}: " + ", ".join(f"{n} {s['seconds']:.0f} s {s['peak_rss_mb'] / 1024:.1f} GiB"
                                   for n, s in manifest["stages"].items()))
