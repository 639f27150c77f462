"""The learning benchmark's arms: valid run configs, equal post-training budgets, one switch off per ablation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dermvlm.config import RunConfig, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "learning"))
import arms


def sequences(stage: dict) -> int:
    """Training sequences a stage spends: SFT rows, DPO pair halves, GRPO completions (each used for every pass)."""
    per_step = stage["trl"]["per_device_train_batch_size"] * (2 if stage["kind"] == "dpo" else 1)
    passes = (stage.get("plus") or {}).get("iterations", 2) if stage["kind"] == "grpo" and stage.get("plus") else 1
    return stage["trl"]["max_steps"] * per_step // passes


@pytest.mark.parametrize("regime", list(arms.REGIMES))
@pytest.mark.parametrize("arm", arms.MAIN_ARMS + arms.ABLATIONS)
def test_every_arm_is_a_valid_config_with_the_same_budget(arm, regime, tmp_path):
    cfg = arms.arm_config(arm, regime, seed=1, out_root=tmp_path)
    run = validate(cfg, RunConfig, f"<arm {arm}>")
    assert run.seed == 1 and run.model.name_or_path.endswith(f"{regime}/s1-base/pretrain/model")
    assert run.data.recipe == arms.REGIMES[regime]
    assert sum(sequences(s) for s in cfg["stages"]) == arms.BUDGET
    assert run.evaluate and all("dermamnist_" in e for e in run.evaluate)


def test_arms_differ_only_where_they_should(tmp_path):
    plus = arms.arm_stages("grpo_plus")[0]
    plain = arms.arm_stages("plain_grpo")[0]
    assert plain["plus"] is None and plus["plus"] is not None
    # plain GRPO makes one pass per generation (GRPO++ two), so it runs half the optimizer steps on the same
    # number of generated completions; everything else is the same
    assert plain["trl"]["max_steps"] * 2 == plus["trl"]["max_steps"]
    same = ("trl", "plus", "name")
    assert {k: v for k, v in plain.items() if k not in same} == {k: v for k, v in plus.items() if k not in same}
    assert {k: v for k, v in plain["trl"].items() if k not in ("max_steps", "save_steps")} == \
        {k: v for k, v in plus["trl"].items() if k not in ("max_steps", "save_steps")}
    from dermvlm.config import GRPOPlusSpec

    configured = GRPOPlusSpec(**plus["plus"]).model_dump()
    for ablation, flip in arms.SWITCHES.items():
        ablated = GRPOPlusSpec(**arms.arm_stages(ablation)[0]["plus"]).model_dump()
        changed = {k for k in ablated if ablated[k] != configured[k]}
        assert changed == set(flip), ablation  # exactly one thing flipped
    assert [s["kind"] for s in arms.arm_stages("dermiq")] == ["grpo", "sft", "dpo"]
    with pytest.raises(KeyError, match="unknown arm"):
        arms.arm_stages("grpo_pluss")


@pytest.mark.parametrize("regime", list(arms.REGIMES))
def test_base_config_builds_the_seeded_micro_model_vision_then_pretrain(regime, tmp_path):
    cfg = validate(arms.base_run_config(regime, 2, tmp_path), RunConfig)
    assert cfg.model.nano.preset == "micro" and cfg.model.nano.seed == 2 and cfg.seed == 2
    assert [(s.name, s.kind) for s in cfg.stages] == [("vision", "vision"), ("pretrain", "sft")]
    assert cfg.stages[1].freeze == ["vision"]
    from dermvlm.config import RecipeConfig, load_config

    recipe = load_config(Path(__file__).resolve().parents[1] / cfg.data.recipe, RecipeConfig)
    for kind, spec in recipe.kinds.enabled().items():  # only the vision stage's probe reads val/test
        assert spec.splits == (["train", "val", "test"] if kind == "image_label" else ["train"]), kind
    assert (recipe.sources[0].train_fraction == 0.1) == (regime == "low_resource")


def test_report_seed_level_claims():
    import report

    assert report.seed_ci([0.1]) is None
    lo, hi = report.seed_ci([0.50, 0.52, 0.54])
    assert lo < 0.52 < hi and round(hi - 0.52, 4) == round(0.52 - lo, 4)


def test_report_bootstrap_metrics_match_the_evaluation_metrics():
    import random

    import report

    from dermvlm.evaluation import metrics as M

    rng = random.Random(3)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    y_true = [rng.choice(classes[:6]) for _ in range(400)]
    y_pred = [rng.choice([*classes, M.UNPARSABLE]) for _ in range(400)]  # off-list and unparsable answers are misses
    t, p, k = report._encode(y_true, y_pred)
    for metric in report.METRICS:
        assert report._fast(metric, t, p, k) == pytest.approx(getattr(M, metric)(y_true, y_pred), abs=1e-12)
    lo, hi = report.fast_ci("balanced_accuracy", y_true, y_pred, n=200)
    assert lo < M.balanced_accuracy(y_true, y_pred) < hi


def test_readme_tables_replace_only_their_block(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from readme_tables import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:begin -->\nold | table\n<!-- t:end -->\noutro\n")
    assert update_readme("t", "| new |\n", readme)
    assert readme.read_text() == "intro\n<!-- t:begin -->\n| new |\n<!-- t:end -->\noutro\n"
    assert not update_readme("missing", "x", readme)
    assert "| new |" in readme.read_text()


def test_cnn_baseline_runs_on_a_small_subset(recipe_data, tmp_path):
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "learning" / "cnn_baseline.py"
    out = tmp_path / "cnn.json"
    argv = [sys.executable, str(script), "--data", str(recipe_data), "--steps", "3", "--batch-size", "8",
            "--side", "28", "--seed", "1", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["seed"] == 1 and "resnet18" in result["model"]
    for split in ("val", "test"):
        assert result[split]["n"] > 0 and 0 <= result[split]["balanced_accuracy"] <= 1
        assert len(result[split]["predictions"]) == result[split]["n"]
