"""The unlabelled image pool of a self-supervised vision stage: the train images of another data recipe (e.g. the
whole DermaMNIST train split beside a low-resource recipe's 10%), built once into the run folder, labels dropped,
less the images the run's own train split already has (by content)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dermvlm.config import ConfigError, RecipeConfig, load_config
from dermvlm.io import atomic_write_text


def _keys(split) -> list[str]:
    from datasets import Image, List

    raw = split.cast_column("images", List(Image(decode=False)))
    return [hashlib.sha256(row["images"][0]["bytes"]).hexdigest() for row in raw]


def pool_recipe(recipe_path: str, where: str) -> RecipeConfig:
    """The recipe a self-supervised stage draws its images from (read as the pipeline will: from the working
    directory), checked: the file exists and builds ``image_label`` rows."""
    path = Path(recipe_path)
    if not path.is_file():
        raise ConfigError(f"{where}: self_supervised.recipe: recipe file not found: {recipe_path}")
    recipe = load_config(path, RecipeConfig)
    if recipe.kinds.image_label is None:
        raise ConfigError(f"{where}: self_supervised.recipe {recipe_path} builds no image_label kind")
    return recipe


def unlabelled_pool(recipe_path: str, run_root: Path, labelled_train, where: str):
    """The ``images`` of ``recipe_path``'s ``image_label`` train split that ``labelled_train`` lacks (a dataset with
    the one column); the recipe is built into ``run_root/unlabelled`` once per recipe hash."""
    from datasets import load_from_disk

    from dermvlm.recipes.build import build, recipe_hash

    path = Path(recipe_path)
    recipe = pool_recipe(recipe_path, where)
    out = run_root / "unlabelled"
    key = recipe_hash(recipe)
    if not ((out / "key.txt").is_file() and (out / "key.txt").read_text() == key):
        build(recipe, out, None, progress=False, base=path.resolve().parent)
        atomic_write_text(out / "key.txt", key)
    pool = load_from_disk(str(out / "image_label"))["train"]
    have = set(_keys(labelled_train))
    keep = [i for i, k in enumerate(_keys(pool)) if k not in have]
    return pool.select(keep).select_columns(["images"])
