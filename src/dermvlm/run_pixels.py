"""A run's pixel budget (``models.pixels``) from config to record: checked before anything loads (``config check``),
applied to the starting model's processor, turned into the side the run's data is stored at, recorded in the
manifest and in every stage's model folder (where serving, evaluation and the chat page read it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, RecipeConfig, RunConfig
from dermvlm.models.pixels import PIXELS_FILE, REFERENCE_SIZE, PixelBudget, image_tokens, pixel_budget

THUMBNAIL_PIXELS = 64 * 64
SMALL_IMAGE_SOURCES = {"dermamnist": "DermaMNIST images are 28x28 px"}
REAL_RESOLUTION = ("data_recipes/real_resolution.yaml (the bundled sample + ../shared/data/isic_cc0), ham10000, "
                   "pad_ufes_20 or your own CSV")


def run_family(cfg: RunConfig) -> str | None:
    """The run's model family: ``model.family``, the nano build's, or the checkpoint's ``config.json`` (a local
    folder or the Hugging Face cache); ``None`` when none of them says."""
    from dermvlm.models.families import UnknownFamilyError, family_for

    model = cfg.model
    if model.family is not None:
        return model.family
    if model.nano is not None:
        return model.nano.family or "qwen2_5_vl"
    folder = Path(str(model.name_or_path))
    if not (folder / "config.json").is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model.name_or_path), "config.json")
        if not isinstance(cached, str):
            return None
        folder = Path(cached).parent
    try:
        return family_for(folder).name
    except UnknownFamilyError:
        return None


def thumbnail_model(name_or_path: str | None) -> bool:
    """A model folder whose recorded pixel budget is itself thumbnail-sized (``PIXELS_FILE``, at most 64x64 px): a
    nano or micro model built for small images and trained on them (e.g. the learning benchmark's base, which its
    arms start from), not a real checkpoint."""
    record = Path(str(name_or_path)) / PIXELS_FILE
    budget = json.loads(record.read_text()) if record.is_file() else {}
    return budget.get("max_pixels", THUMBNAIL_PIXELS + 1) <= THUMBNAIL_PIXELS


def check_pixels(p: Any) -> str:
    """``config check``'s pixel-budget line (one of ``run_check.CHECKS``; ``p`` is its ``RunPlan``)."""
    check_run_pixels(p.cfg, p.recipe, p.source)
    family = run_family(p.cfg) or "its family is read when it loads"
    pixels = p.cfg.model.pixels
    what = f"model.pixels {pixels.model_dump(exclude_none=True)}" if pixels else "the model's own processor settings"
    return f"pixels: {what} ({family}), in training, rollouts, serving, evaluation and the chat page"


def check_run_pixels(cfg: RunConfig, recipe: RecipeConfig, source: str = "<config>") -> None:
    """Refuse, before anything loads, a pixel budget the model family cannot take and a real checkpoint trained on
    thumbnails (``recipe``: the run's, with what ``data:`` names merged in); one line naming the field and what to
    use."""
    from dermvlm.models.pixels import check_pixels

    if cfg.model.pixels is not None:
        family = run_family(cfg)
        if family is None:
            raise ConfigError(f"{source}: model.pixels: the family of {cfg.model.name_or_path} is unknown here (it is "
                              "not downloaded); set model.family (qwen2_5_vl, qwen3_vl, smolvlm, ...) so the budget "
                              "can be checked")
        why = check_pixels(family, cfg.model.pixels)
        if why:
            raise ConfigError(f"{source}: {why}")
    if cfg.model.nano is None and not thumbnail_model(cfg.model.name_or_path):
        small = [SMALL_IMAGE_SOURCES[s.name] for s in recipe.sources if s.name in SMALL_IMAGE_SOURCES]
        if small:
            raise ConfigError(f"{source}: data.recipe: {small[0]}, far below the pixel budget of a real checkpoint "
                              f"(Qwen2.5-VL turns them into 4 visual tokens); train {cfg.model.name_or_path} on "
                              f"real-resolution images: {REAL_RESOLUTION}")


def run_processor(cfg: RunConfig, base: str | Path):
    """The starting model's processor with the run's budget applied (no weights load)."""
    from dermvlm.models.loading import load_processor

    return load_processor(base, cfg.model.trust_remote_code, cfg.model.pixels, run_family(cfg))


def run_budget(cfg: RunConfig, base: str | Path | None = None,
               image_size: tuple[int, int] = REFERENCE_SIZE) -> PixelBudget:
    """The run's effective pixel budget and the tokens one image of ``image_size`` (width, height) costs at it, read
    from the starting model's processor (``base``: a built folder; default ``model.name_or_path``) with
    ``model.pixels`` applied, no weights loaded: what the memory planner reads."""
    return pixel_budget(run_processor(cfg, base or str(cfg.model.name_or_path)), image_size)


def with_image_side(config: Any, side: int | None) -> Any:
    """A recipe or suite config storing its images no smaller than ``side`` (the longest side the budget uses):
    unchanged when its own ``image.max_side`` is as large, so a recipe whose budget needs no more keeps its key."""
    if side is None or side <= config.image.max_side:
        return config
    return config.model_copy(update={"image": config.image.model_copy(update={"max_side": side})})


def recorded_budget(processor, data_dir: Path) -> tuple[PixelBudget, dict[str, Any]]:
    """The budget as the run applies it (images stored at the data's side) and the manifest's record of it: tokens
    per image for the data's typical (median) image and for a 1024x768 photograph."""
    stats = json.loads((data_dir / "stats.json").read_text())
    side = json.loads((data_dir / "recipe.json").read_text())["image"]["max_side"]
    typical = tuple(stats.get("image_size_median") or REFERENCE_SIZE)
    budget = pixel_budget(processor, typical, floor_side=side)  # type: ignore[arg-type]
    reference = image_tokens(processor, *REFERENCE_SIZE)
    return budget, {**budget.as_dict(), "reference_size": list(REFERENCE_SIZE), "reference_tokens": reference}
