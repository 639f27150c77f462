"""One pixel budget per run (``models.pixels``): refused by `config check` where a family cannot take it, applied to
the processor, saved with it and handed to vLLM, turned into the side data is stored and images are sent at. That the
HF processor and a vLLM server then count the same tokens, and that evaluation sends at the budget, is checked per
family in test_families_pipeline.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import ConfigError, PixelsSpec, RecipeConfig, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def run_config(tmp_path: Path, model: dict, recipe: str = "data_recipes/sample.yaml") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "px", "model": model, "data": {"recipe": str(ROOT / recipe)},
                                    "stages": [{"name": "sft", "trl": {"max_steps": 1}}]}))
    return path


@pytest.mark.parametrize(("model", "recipe", "message"), [
    ({"nano": {"family": "gemma3"}, "pixels": {"max": 802816}}, "data_recipes/sample.yaml",
     "model.pixels: gemma3 (Gemma 3 / MedGemma) resizes every image to its fixed input"),
    ({"nano": {"family": "llava_next"}, "pixels": {"max": 802816}}, "data_recipes/sample.yaml",
     "model.pixels: llava_next tiles every image on the checkpoint's anyres grid"),
    ({"nano": {"family": "smolvlm"}, "pixels": {"min": 4096, "max": 65536}}, "data_recipes/sample.yaml",
     "model.pixels.min: smolvlm has no minimum"),
    ({"name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "pixels": {"max": 200704}}, "data_recipes/sample.yaml",
     "model.pixels: the family of Qwen/Qwen2.5-VL-7B-Instruct is unknown here"),
    ({"name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "family": "qwen2_5_vl"}, "data_recipes/dermamnist.yaml",
     "data.recipe: DermaMNIST images are 28x28 px"),
])
def test_config_check_refuses_a_budget_or_data_the_model_cannot_take(tmp_path, model, recipe, message):
    path = run_config(tmp_path, model, recipe)
    r = CliRunner().invoke(app, ["config", "check", str(path)])
    assert r.exit_code != 0
    assert r.output.count("\n") == 1 and f"{path}: {message}" in r.output  # one line, naming the field
    with pytest.raises(ValueError, match="must not exceed max"):
        PixelsSpec(min=5, max=4)


def test_a_thumbnail_model_folder_may_continue_on_dermamnist_a_real_checkpoint_may_not(tmp_path):
    # the learning benchmark's arms start from its micro base (a folder with a 28 px budget), not from a checkpoint
    from dermvlm.run_pixels import check_run_pixels

    recipe = load_config(ROOT / "data_recipes" / "dermamnist.yaml", RecipeConfig)
    for max_pixels, refused in ((28 * 28, False), (200704, True)):
        folder = tmp_path / str(max_pixels)
        folder.mkdir()
        (folder / "dermvlm_pixels.json").write_text(f'{{"min_pixels": 784, "max_pixels": {max_pixels}}}')
        cfg = load_config(run_config(tmp_path, {"name_or_path": str(folder), "family": "qwen2_5_vl"},
                                     "data_recipes/dermamnist.yaml"), RunConfig)
        if refused:
            with pytest.raises(ConfigError, match="DermaMNIST images are 28x28 px"):
                check_run_pixels(cfg, recipe)
        else:
            check_run_pixels(cfg, recipe)


def test_the_real_model_configs_train_on_real_resolution_data():
    for path in sorted((ROOT / "configs").glob("*-qlora.yaml")):
        cfg = load_config(path)
        assert cfg.data.recipe == "data_recipes/real_resolution.yaml", path
        recipe = load_config(ROOT / cfg.data.recipe, RecipeConfig)
        assert {s.name for s in recipe.sources} == {"isic", "sample"} and recipe.image.max_side >= 1024
        assert cfg.model.pixels is not None or cfg.model.family == "gemma3", path  # Gemma's input is fixed


def test_the_budget_is_applied_saved_and_handed_to_vllm(nano_dir, tmp_path):
    from transformers import AutoImageProcessor

    from dermvlm.models.loading import load_processor
    from dermvlm.models.pixels import budget_side, image_side, pixel_budget, vllm_pixel_args
    from dermvlm.run_pixels import run_budget, with_image_side

    own = load_processor(nano_dir)
    assert pixel_budget(own).tokens_per_image == 14  # the nano build's 112x112 budget: 1024x768 → 112x84, 12 + 2
    processor = load_processor(nano_dir, pixels=PixelsSpec(max=224 * 224))
    budget = pixel_budget(processor)
    assert (budget.min_pixels, budget.max_pixels, budget.input_size) == (56 * 56, 224 * 224, (252, 168))
    assert budget.tokens_per_image == 9 * 6 + 2 and budget.image_side == 308  # 2:1 photographs keep 308x154
    cfg = RunConfig.model_validate({"name": "px", "stages": [{"name": "sft"}],
                                    "model": {"name_or_path": str(nano_dir), "pixels": {"max": 224 * 224}}})
    assert run_budget(cfg) == budget  # what the memory planner reads, from the config alone
    processor.save_pretrained(tmp_path)  # as every stage saves it beside its model
    saved = AutoImageProcessor.from_pretrained(tmp_path)
    assert saved.size == {"shortest_edge": 3136, "longest_edge": 50176}
    (tmp_path / "config.json").write_text((nano_dir / "config.json").read_text())
    args = vllm_pixel_args(tmp_path)
    assert args[:2] == ["--mm-processor-kwargs", '{"size": {"shortest_edge": 3136, "longest_edge": 50176}}']
    assert args[2:] == ["--limit-mm-per-prompt", '{"video": 0}']
    assert image_side(tmp_path) == 308
    sample = load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig)
    assert with_image_side(sample, budget_side(own)) is sample  # 140 ≤ 224: the data and its key stay as they were
    assert with_image_side(sample, 308).image.max_side == 308


def test_the_chat_page_sends_images_at_the_models_side_not_1024(tmp_path):
    from dermvlm.app.chat import MAX_SIDE, image_url
    from dermvlm.datasets.sample import load_sample_records

    photo = tmp_path / "photo.jpg"
    with Image.open(load_sample_records(limit=1)[0].image) as im:
        im.convert("RGB").resize((1600, 1200)).save(photo, quality=95)

    def sent(url: str) -> tuple[int, int]:
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size

    assert sent(image_url(photo, 308)) == (308, 231)
    assert sent(image_url(photo)) == (MAX_SIDE, 768)  # a model whose budget is unknown: 1024 px as before


def test_a_budget_that_cannot_apply_to_the_loaded_processor_fails_in_one_line(nano_dir):
    from dermvlm.models.loading import load_processor

    with pytest.raises(ConfigError, match=r"model.pixels: the budget's minimum 3136 exceeds its maximum 1000"):
        load_processor(nano_dir, pixels=PixelsSpec(max=1000))


def test_grpo_vllm_colocate_is_built_with_the_run_budget(nano_dir):
    """TRL 1.16 builds its colocated ``vllm.LLM`` without processor arguments; while the trainer is built, the
    engine it calls gets the run's budget (on CPU TRL's colocate mode fails at its first weight sync, so the
    engine itself is only started on a GPU)."""
    import functools
    from types import SimpleNamespace

    from trl.generation import vllm_generation

    from dermvlm.models.loading import load_processor
    from dermvlm.training.grpo.vllm_budget import budgeted_colocate, server_flags

    processor = load_processor(nano_dir, pixels=PixelsSpec(max=224 * 224))
    build = vllm_generation.LLM
    with budgeted_colocate(SimpleNamespace(use_vllm=True, vllm_mode="colocate"), processor):
        engine = vllm_generation.LLM
        assert isinstance(engine, functools.partial) and engine.func is build
        assert engine.keywords == {"mm_processor_kwargs": {"size": {"shortest_edge": 3136, "longest_edge": 50176}}}
    assert vllm_generation.LLM is build
    with budgeted_colocate(SimpleNamespace(use_vllm=False, vllm_mode="colocate"), processor):
        assert vllm_generation.LLM is build
    assert server_flags(processor) == ["--mm-processor-kwargs",
                                       """'{"size": {"shortest_edge": 3136, "longest_edge": 50176}}'"""]
