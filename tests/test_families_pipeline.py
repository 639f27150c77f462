"""Every model family through the whole workflow, as a user runs it: one `dermvlm pipeline` per family on its tiny
build (full SFT, GRPO++ with LoRA, LoRA SFT, DPO on KG-ranked policy pairs, each LoRA stage merged), then the final
model served by vLLM and evaluated on a suite. One test per family x step, so the README's families table
(`scripts/families_table.py`) is these tests' results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dermvlm.models.families import FAMILIES, family_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.vllm]
NAMES = sorted(FAMILIES)
SUITE = """\
name: family_check
sources: [{name: sample}]
split: test
split_fractions: {val: 0.15, test: 0.2}
types: [mcq]
image: {max_side: 224}
max_tokens: 48
limit: 6
bootstrap: 0
"""


def config(family: str, out: Path, suite: Path) -> dict:
    lora = {"use_lora": True}
    return {
        "name": f"fam-{family}", "seed": 0, "output_dir": str(out),
        "model": {"nano": {"family": family, "seed": 0}, "dtype": "float32",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml")},
        "stages": [
            {"name": "pretrain", "kind": "sft", "use_lora": False, "data": ["reasoning_trace"],
             "trl": {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 2}},
            {**lora, "name": "grpo", "kind": "grpo", "rewards": {"format": 0.2, "partial_credit": 1.0},
             "plus": {"clip_higher": 0.28, "token_level_loss": True, "zero_variance_filter": False},
             "trl": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
                     "max_completion_length": 16, "learning_rate": 1e-4}},
            {**lora, "name": "sft", "kind": "sft", "data": ["conversation"],
             "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3}},
            {**lora, "name": "dpo", "kind": "dpo", "pairs_from": "policy", "policy_samples": 2, "min_margin": 0.0,
             "max_prompts": 2, "sample_max_new_tokens": 16,
             "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 5e-5}},
        ],
        "serve": {"dtype": "float32", "max_model_len": 1024},
        "evaluate": [str(suite)],
    }


@pytest.fixture(scope="module", params=NAMES)
def family_run(request, tmp_path_factory):
    """The pipeline's outcome for one family (kept even when it fails, so each step's test says which broke)."""
    import yaml

    from dermvlm.config import RunConfig, load_config
    from dermvlm.pipeline import run_pipeline

    family = request.param
    tmp = tmp_path_factory.mktemp(f"fam-{family}")
    suite = tmp / "suite.yaml"
    suite.write_text(SUITE)
    cfg_file = tmp / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(config(family, tmp / "runs", suite)))
    error = None
    try:
        run_pipeline(load_config(cfg_file, RunConfig), source=str(cfg_file))
    except Exception as err:  # each step's test reports its own part of a failure
        error = f"{type(err).__name__}: {err}"
    return family, tmp / "runs" / f"fam-{family}", error


def _stage(run: Path, name: str) -> dict:
    done = run / name / "done.json"
    assert done.is_file(), f"stage {name} did not finish"
    return json.loads(done.read_text())


def _trained(family: str, run: Path, name: str, lora: bool) -> None:
    _stage(run, name)
    history = json.loads((run / name / "log_history.json").read_text())
    losses = [h.get("loss", h.get("train_loss")) for h in history if "loss" in h or "train_loss" in h]
    assert losses and all(math.isfinite(float(x)) for x in losses)
    assert family_for(run / name / "model").name == family  # the saved (merged) folder is still this family
    assert (run / name / "adapter" / "adapter_config.json").is_file() == lora


def test_sft_full(family_run):
    family, run, _ = family_run
    _trained(family, run, "pretrain", lora=False)


def test_grpo_plus_lora(family_run):
    family, run, _ = family_run
    _trained(family, run, "grpo", lora=True)


def test_sft_lora_and_merge(family_run):
    family, run, _ = family_run
    _trained(family, run, "sft", lora=True)


def test_dpo_policy_pairs(family_run):
    family, run, _ = family_run
    _trained(family, run, "dpo", lora=True)
    assert json.loads((run / "dpo" / "pairs_stats.json").read_text())["pairs"] >= 1


def test_served_and_evaluated(family_run):
    _, run, error = family_run
    assert error is None, error
    metrics = json.loads((run / "eval" / "family_check" / "metrics.json").read_text())
    assert metrics["n_items"] == 6 and metrics["errors"] == 0  # vLLM answered every item
    assert metrics["metrics"]["types"]["mcq"]["n"] == 6
