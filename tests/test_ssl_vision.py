"""The self-supervised vision stage and the CNN's SimCLR: images without their labels (another recipe's train split
less the run's own), two views each, the tower trained, labels never read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dermvlm.config import ConfigError, ModelSpec, make_stage
from dermvlm.training.common import recipe_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def other_recipe(tmp_path_factory) -> Path:
    """The bundled sample split with another seed: its train split differs from the session recipe's."""
    data = yaml.safe_load((ROOT / "data_recipes" / "sample.yaml").read_text())
    data["seed"] = 7
    path = tmp_path_factory.mktemp("other") / "sample_other.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_nt_xent_rewards_matching_views():
    from dermvlm.training.ssl_vision import nt_xent

    z = torch.randn(16, 8)
    assert nt_xent(z, z, 0.2) < nt_xent(z, torch.randn(16, 8), 0.2)


def test_ssl_stage_trains_the_tower_on_the_unlabelled_pool(nano_dir, recipe_data, other_recipe, tmp_path):
    from datasets import load_from_disk

    from dermvlm.models.loading import load_model
    from dermvlm.training.ssl_vision import run_ssl_vision
    from dermvlm.unlabelled import _keys, unlabelled_pool

    with pytest.raises(ValueError, match="uses no labels"):
        make_stage(name="ssl", kind="vision", self_supervised={})
    labelled = recipe_dataset(recipe_data, ["image_label"])
    pool = unlabelled_pool(str(other_recipe), tmp_path, labelled, "test")
    other_train = load_from_disk(str(tmp_path / "unlabelled" / "image_label"))["train"]
    assert pool.column_names == ["images"] and 0 < len(pool) < len(other_train)  # labels dropped, overlap removed
    assert not set(_keys(pool)) & set(_keys(labelled))
    with pytest.raises(ConfigError, match="recipe file not found"):
        unlabelled_pool(str(tmp_path / "nope.yaml"), tmp_path, labelled, "test")
    stage = make_stage(name="ssl", kind="vision", supervised=False, contrastive=False,
                       self_supervised={"recipe": str(other_recipe)},
                       trl={"max_steps": 3, "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 3})
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32")
    result = run_ssl_vision(stage, spec, nano_dir, {"train": labelled, "unlabelled": pool}, tmp_path / "ssl")
    assert result.extra["pool_images"] == len(labelled) + len(pool)
    losses = result.losses()
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)
    before, _ = load_model(spec, nano_dir)
    after, _ = load_model(spec, result.model_dir)
    tower = next(k for k in before.state_dict() if ".visual." in k and k.endswith("qkv.weight"))
    text = next(k for k in before.state_dict() if "language_model" in k and k.endswith("up_proj.weight"))
    assert not torch.equal(before.state_dict()[tower], after.state_dict()[tower])  # the tower learned
    assert torch.equal(before.state_dict()[text], after.state_dict()[text])  # the language model did not


def test_cnn_simclr_on_the_unlabelled_images_then_supervised(recipe_data, other_recipe, tmp_path):
    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.recipes.build import build

    other = tmp_path / "other"
    build(load_config(other_recipe, RecipeConfig), other, progress=False, base=ROOT / "data_recipes")
    out = tmp_path / "cnn.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "learning" / "cnn_baseline.py"), "--data", str(recipe_data),
            "--unlabelled", str(other), "--ssl-epochs", "1", "--epochs", "1", "--batch-size", "8", "--side", "28",
            "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ssl"]["images"] > 0 and result["ssl"]["steps"] >= 1 and result["test"]["n"] > 0
