"""Shared fixtures: offline, one-thread environment; the nano model and one short training run per session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DERMVLM_DATA_ROOT") or os.environ.get("DERMVLM_SHARED_DATA")
                   or ROOT.parent / "shared" / "data")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))


REQUIRE_DATA = os.environ.get("DERMVLM_REQUIRE_DATA") == "1"  # CI here: the real data must be there


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (non-commercial ones are not in the repository): a test that needs them is skipped, with
    how to get them, on a machine that has only the repository (failed instead under DERMVLM_REQUIRE_DATA=1)."""
    if not (SHARED_DATA / "isic_cc0" / "images").is_dir():
        message = (f"real data not found at {SHARED_DATA}: set DERMVLM_DATA_ROOT to the folder holding isic_cc0/, "
                   "pad_ufes_20/, dermamnist/ and knowledge/ (README: Data and licences); DermaMNIST: "
                   "`dermvlm data fetch dermamnist` where the internet is reachable")
        if REQUIRE_DATA:
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def isic_images(shared_data) -> list[Path]:
    return sorted((shared_data / "isic_cc0" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def nano_dir(tmp_path_factory) -> Path:
    from dermvlm.models.nano import build_nano

    return build_nano(tmp_path_factory.mktemp("nano") / "model", "nano", seed=0)


@pytest.fixture(scope="session")
def recipe_data(tmp_path_factory) -> Path:
    """The bundled sample built with data_recipes/sample.yaml (every kind)."""
    from dermvlm.config import RecipeConfig, load_config
    from dermvlm.recipes.build import build

    out = tmp_path_factory.mktemp("data") / "sample"
    build(load_config(ROOT / "data_recipes" / "sample.yaml", RecipeConfig), out, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, nano_dir, recipe_data):
    """A short full-parameter pretrain on recipe data, then a LoRA SFT on it: a model that answers in the DermIQ
    format (``base`` is the pretrained model, ``merged`` the LoRA stage merged into it)."""
    from dermvlm.config import ModelSpec, make_stage
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.sft import run_sft

    out = tmp_path_factory.mktemp("run")
    ds = recipe_dataset(recipe_data, ["reasoning_trace", "open_diagnosis", "mcq"])
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0})
    pre = run_sft(make_stage(name="pretrain", use_lora=False, trl={"max_steps": 150, "learning_rate": 3e-3}),
                  spec, nano_dir, ds, out / "pretrain")
    sft = run_sft(make_stage(name="sft", use_lora=True, trl={"max_steps": 15, "learning_rate": 2e-3}),
                  spec, pre.model_dir, ds, out / "sft")
    return {"base": pre.model_dir, "adapter": sft.adapter_dir, "merged": sft.model_dir, "spec": spec}


VLLM_API_KEY = "test-key"


@pytest.fixture(scope="session")
def vllm_server(trained_run, tmp_path_factory):
    """One real vLLM server for the session (its start costs over a minute on 2 cores): the pretrained ``base``
    in float32 with the LoRA SFT stage as adapter ``derm``, behind the front door with ``VLLM_API_KEY``."""
    from dermvlm.serving.server import ServeOptions, VLLMServer

    options = ServeOptions(
        model=str(trained_run["base"]), served_model_name="base", dtype="float32", api_key=VLLM_API_KEY,
        loras={"derm": str(trained_run["adapter"])}, max_lora_rank=8,
        log_file=str(tmp_path_factory.mktemp("vllm") / "server.log"),
    )
    with VLLMServer(options) as srv:
        yield srv
