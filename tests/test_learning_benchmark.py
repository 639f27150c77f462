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


def test_vlm_vs_cnn_names_the_side_ahead_on_every_seed():
    import report

    cnn = {"seeds": [0, 1, 2], "test_per_seed": {"balanced_accuracy": [0.40, 0.40, 0.40]}}

    def arm(values):
        return {"seeds": [0, 1, 2], "per_seed": {s: {"test": {"balanced_accuracy": v}} for s, v in enumerate(values)}}

    behind = report.vlm_vs_cnn(arm([0.35, 0.38, 0.39]), cnn)
    assert behind["per_seed_delta"] == [-0.05, -0.02, -0.01] and behind["cnn_beats_vlm"]
    assert not behind["vlm_beats_cnn"]
    mixed = report.vlm_vs_cnn(arm([0.47, 0.41, 0.397]), cnn)
    assert not mixed["vlm_beats_cnn"] and not mixed["cnn_beats_vlm"]
    assert report.vlm_vs_cnn(arm([0.45, 0.41, 0.42]), cnn)["vlm_beats_cnn"]


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


def _record(arm: str, seed: int, ids: list[str] | None, gold: list[str], pred: list[str]) -> dict:
    return {"kind": "vlm", "regime": "full", "run": f"s{seed}-{arm}", "arm": arm, "seed": seed, "source": "test",
            "test": {"ids": ids, "gold": gold, "pred": pred}, "stages": {}, "curves": {}, "data": {}}


def test_paired_delta_pairs_items_by_id_and_falls_back_to_unpaired_without_ids():
    import random

    import report

    from dermvlm.evaluation import metrics as M

    rng = random.Random(5)
    classes = ["akiec", "bcc", "mel", "nv"]
    a_runs, b_runs, a_lost, b_lost = {}, {}, {}, {}
    for seed in (0, 1, 2):
        ids = [f"x{i:04d}" for i in range(300)]
        gold = [rng.choice(classes) for _ in ids]
        b = [g if rng.random() < 0.6 else rng.choice(classes) for g in gold]
        a = [g if rng.random() < 0.3 else p for g, p in zip(gold, b, strict=True)]  # a = b with some mistakes fixed
        order = list(range(300))
        rng.shuffle(order)  # b's record lists the same items in another order: pairing is by id, not position
        a_runs[seed] = _record("grpo_plus", seed, ids, gold, a)
        b_runs[seed] = _record("sft_only", seed, [ids[i] for i in order], [gold[i] for i in order],
                               [b[i] for i in order])
        a_lost[seed] = a_runs[seed] | {"test": a_runs[seed]["test"] | {"ids": None}}
        b_lost[seed] = b_runs[seed] | {"test": b_runs[seed]["test"] | {"ids": None}}
    paired = report.paired_delta(a_runs, b_runs, "balanced_accuracy", n=300)
    for s, d in zip((0, 1, 2), paired["per_seed"], strict=True):
        ta, tb = a_runs[s]["test"], b_runs[s]["test"]
        assert d == round(M.balanced_accuracy(ta["gold"], ta["pred"]) - M.balanced_accuracy(tb["gold"], tb["pred"]), 4)
    assert paired["item_bootstrap"] == {"paired_seeds": [0, 1, 2], "unpaired_seeds": []}
    assert paired["a_beats_b"] and paired["ci95"][0] > 0
    unpaired = report.paired_delta(a_lost, b_lost, "balanced_accuracy", n=300)
    assert unpaired["per_seed"] == paired["per_seed"] and unpaired["seed_ci95"] == paired["seed_ci95"]
    assert unpaired["item_bootstrap"] == {"paired_seeds": [], "unpaired_seeds": [0, 1, 2]}
    width = [d["ci95"][1] - d["ci95"][0] for d in (paired, unpaired)]
    assert width[0] < width[1]  # pairing removes the items' shared difficulty from the interval


def test_legacy_records_keep_every_per_seed_metric(tmp_path):
    import json

    import records
    import report

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "learning.json"
    records.import_legacy(results, tmp_path)
    old = json.loads(results.read_text())["regimes"]["full"]
    recs = records.load_regime("full", tmp_path)
    assert {r["kind"] for r in recs.values()} == {"vlm", "cnn"}
    again = report.summarize_arm({r["seed"]: r for r in recs.values() if r.get("arm") == "grpo_plus"})
    assert again["test_per_seed"] == old["arms"]["grpo_plus"]["test_per_seed"]
    assert again["per_class_recall_mean"] == old["arms"]["grpo_plus"]["per_class_recall_mean"]
    assert records.import_legacy(results, tmp_path) == []  # never overwrites a record


def test_a_recorded_run_is_not_run_again_and_its_base_only_while_needed(tmp_path):
    import records
    import run

    for name in ("s0-base", "s0-sft_only", "s1-base", "cnn-s0"):
        records.write(records.record_path("full", name, tmp_path), {"kind": "vlm"})
    jobs = [("full/s0-base", None, None), ("full/s1-base", None, None),
            ("full/s0-sft_only", None, "full/s0-base"), ("full/cnn-s0", None, "full/s0-base"),
            ("full/s1-sft_only", None, "full/s1-base"), ("full/cnn-s1", None, "full/s1-base")]
    todo = {n: dep for n, _, dep in run.drop_recorded(jobs, tmp_path)}
    # seed 0: all recorded, nothing runs; seed 1: the arm needs its base again (its folder may be gone); the CNN
    # needs only the data, so it waits for the base only because the base runs anyway.
    assert todo == {"full/s1-base": None, "full/s1-sft_only": "full/s1-base", "full/cnn-s1": "full/s1-base"}
    records.write(records.record_path("full", "s1-sft_only", tmp_path), {"kind": "vlm"})
    assert {n: dep for n, _, dep in run.drop_recorded(jobs, tmp_path)} == {"full/cnn-s1": None}


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
