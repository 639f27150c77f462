"""The learning benchmark's arms: valid run configs, equal post-training budgets, one switch off per ablation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dermvlm.config import RunConfig, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "learning"))
import arms


def sequences(stage: dict) -> int:
    per_step = stage["trl"]["per_device_train_batch_size"] * (2 if stage["kind"] == "dpo" else 1)
    return stage["trl"]["max_steps"] * per_step


@pytest.mark.parametrize("arm", arms.MAIN_ARMS + arms.ABLATIONS)
def test_every_arm_is_a_valid_config_with_the_same_budget(arm, tmp_path):
    cfg = arms.arm_config(arm, seed=1, out_root=tmp_path)
    run = validate(cfg, RunConfig, f"<arm {arm}>")
    assert run.seed == 1 and run.model.name_or_path.endswith("s1-pretrain/pretrain/model")
    assert sum(sequences(s) for s in cfg["stages"]) == arms.BUDGET
    assert run.evaluate and all("dermamnist_" in e for e in run.evaluate)


def test_arms_differ_only_where_they_should(tmp_path):
    plus = arms.arm_stages("grpo_plus")[0]
    plain = arms.arm_stages("plain_grpo")[0]
    assert plain["plus"] is None and plus["plus"] is not None
    assert {k: v for k, v in plain.items() if k not in ("plus", "name")} == \
        {k: v for k, v in plus.items() if k not in ("plus", "name")}
    for switch, off in arms.SWITCHES.items():
        ablated = arms.arm_stages(f"no_{switch}")[0]["plus"]
        changed = {k for k in ablated if ablated[k] != plus["plus"].get(k)}
        assert changed == set(off), switch
    assert [s["kind"] for s in arms.arm_stages("dermiq")] == ["grpo", "sft", "dpo"]
    with pytest.raises(KeyError, match="unknown arm"):
        arms.arm_stages("grpo_pluss")


def test_pretrain_config_builds_the_seeded_micro_model_on_the_train_split(tmp_path):
    cfg = validate(arms.pretrain_config(2, tmp_path), RunConfig)
    assert cfg.model.nano.preset == "micro" and cfg.model.nano.seed == 2 and cfg.seed == 2
    assert [s.name for s in cfg.stages] == ["pretrain"]
    from dermvlm.config import RecipeConfig, load_config

    recipe = load_config(Path(__file__).resolve().parents[1] / cfg.data.recipe, RecipeConfig)
    assert all(spec.splits == ["train"] for spec in recipe.kinds.enabled().values())


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
