"""The learning benchmark's arms (valid run configs, equal post-training budgets, one switch off per ablation), its
statistics (decodes, AUC, paired intervals, when a claim holds) and its CNN anchor."""

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
    assert [e for e in run.evaluate if "dermamnist_" in e] == ["benchmarks/learning/dermamnist_val.yaml",
                                                               "benchmarks/learning/dermamnist_test.yaml"]
    assert (arms.FACTUALITY_SUITE in run.evaluate) == (arm == "dermiq")


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
    grpo, sft, dpo = arms.arm_stages("dermiq")
    assert (grpo["kind"], sft["kind"], dpo["kind"]) == ("grpo", "sft", "dpo")
    assert sft["class_balanced"] and dpo["class_balanced"] and "open_diagnosis" in sft["data"]  # recognition replay
    # the fair control: SFT-only with GRPO++'s class draw, nothing else changed
    plain_sft, fair = arms.arm_stages("sft_only")[0], arms.arm_stages("sft_balanced")[0]
    assert {k for k in fair if fair.get(k) != plain_sft.get(k)} == {"name", "class_balanced", "balance"}
    assert fair["balance"] == plus["plus"]["balance"]
    nothink = arms.arm_stages("grpo_nothink")[0]
    assert nothink["rewards"] == arms.NOTHINK_REWARDS and nothink["plus"] == plus["plus"]
    with pytest.raises(KeyError, match="unknown arm"):
        arms.arm_stages("grpo_pluss")


@pytest.mark.parametrize("regime", list(arms.REGIMES))
def test_base_config_builds_the_seeded_micro_model_vision_then_pretrain(regime, tmp_path):
    cfg = validate(arms.base_run_config(regime, 2, tmp_path), RunConfig)
    assert cfg.model.nano.preset == "micro" and cfg.model.nano.seed == 2 and cfg.seed == 2
    assert [(s.name, s.kind) for s in cfg.stages] == [("vision", "vision"), ("pretrain", "sft")]
    assert cfg.stages[1].freeze == [] and cfg.stages[1].lr_scale == {"vision": 0.1}  # the tower at a tenth of the rate
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


def test_a_claim_needs_two_seeds_one_code_and_both_intervals_above_zero():
    import report

    d = {"per_seed": [0.03, 0.02, 0.04], "codes": ["abc"], "seed_ci95": [0.01, 0.05], "item_ci95": [0.005, 0.05]}
    assert report.verdict(d) == "holds"
    assert report.verdict(d | {"item_ci95": [-0.01, 0.05]}) == "not shown"  # ahead on every seed is not enough
    assert report.verdict(d | {"codes": ["abc", "def"]}).startswith("mixed code")
    assert report.verdict(d | {"per_seed": [0.05], "seed_ci95": None}) == "one seed: no claim"
    assert report.verdict(d | {"seed_ci95": [-0.05, -0.01], "item_ci95": [-0.04, -0.01]}) == "reversed"


def test_targets_take_the_best_two_seed_arm_and_hold_it_against_the_cnn_on_every_seed():
    import report

    def arm(seeds: int, **means: float) -> dict:
        return {"seeds": list(range(seeds)), "stats": {k.replace("__", ":"): {"mean": v} for k, v in means.items()}}

    def diff(per_seed: list[float], verdict: str = "not shown") -> dict:
        return {"per_seed": per_seed, "delta": sum(per_seed) / len(per_seed), "verdict": verdict}

    full = {"arms": {"grpo_plus": arm(3, scores__auc=0.93, balanced__balanced_accuracy=0.60),
                     "sft_balanced": arm(3, scores__auc=0.925, balanced__balanced_accuracy=0.57),
                     "no_curriculum": arm(1, scores__auc=0.99), "cnn": arm(3, scores__auc=0.92)},
            "comparisons": {"grpo_plus − cnn (scores:auc)": diff([0.02, 0.01, -0.001]),
                            "grpo_plus − sft_balanced (balanced:balanced_accuracy)": diff([0.03] * 3, "holds"),
                            "grpo_plus − sft_balanced (scores:auc)": diff([0.005] * 3)},
            "parameters": 19_000_000}
    low = {"arms": {"base_ssl-grpo_plus": arm(3, scores__auc=0.85), "base": arm(3, scores__auc=0.84),
                    "cnn": arm(3, scores__auc=0.83), "cnn_ssl": arm(3, scores__auc=0.86)}, "comparisons": {}}
    t = report.targets({"full": full, "low_resource": low})
    auc = t["best_arm_auc"]
    assert auc["arm"] == "grpo_plus" and auc["value"] == 0.93  # the one-seed ablation is never the best arm
    assert not auc["above_cnn_every_seed"] and not auc["met"]  # above on the mean, below on one seed
    assert t["grpo_plus_over_sft_balanced"]["met"] and t["max_params"]["met"]
    # the lab that saw the unlabelled images is held against the CNN given them too: base (vs cnn) is the better one
    assert t["low_resource_vlm_vs_cnn_auc"] == {"arm": "base", "auc": 0.84, "anchor": "cnn", "anchor_auc": 0.83,
                                                "met": True}
    assert not t["dermiq_within_grpo_plus"]["met"]  # not measured is not met
    lines = "\n".join(report.targets_markdown(t))
    assert "best arm auc ≥ 0.92 and above the CNN on every seed (full): **missed**" in lines


def test_fast_metrics_match_the_evaluation_metrics_and_sklearn_auc():
    import random

    import numpy as np
    import report
    from sklearn.metrics import roc_auc_score

    from dermvlm.evaluation import metrics as M

    rng = random.Random(3)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    y_true = [rng.choice(classes[:6]) for _ in range(400)]
    y_pred = [rng.choice([*classes, M.UNPARSABLE]) for _ in range(400)]  # off-list and unparsable answers are misses
    t, p, k = M.encode(y_true, y_pred)
    for metric in report.METRICS:
        assert M.integer_metric(metric, t, p, k) == pytest.approx(getattr(M, metric)(y_true, y_pred), abs=1e-12)
    lo, hi = M.fast_bootstrap("balanced_accuracy", y_true, y_pred, n=200)
    assert lo < M.balanced_accuracy(y_true, y_pred) < hi
    probs = np.random.default_rng(0).dirichlet(np.ones(6), 400)
    gold = [classes[i] for i in np.random.default_rng(1).integers(0, 6, 400)]
    ts, _, ks = M.encode(gold, gold, classes[:6])
    expected = np.mean([roc_auc_score([g == c for g in gold], probs[:, j]) for j, c in enumerate(classes[:6])])
    assert report.fast_auc(ts, probs, ks) == pytest.approx(expected, abs=1e-12)


def _record(arm: str, seed: int, ids: list[str], gold: list[str], pred: list[str], scores, classes, val=None) -> dict:
    test = {"ids": ids, "gold": gold, "pred": pred, "classes": classes, "scores": scores}
    return {"kind": "vlm", "regime": "full", "run": f"s{seed}-{arm}", "arm": arm, "seed": seed, "source": "test",
            "code": {"code": "c0"}, "test": test, "val": val or test, "stages": {}, "curves": {}, "data": {}}


def test_decodes_and_paired_intervals_by_item_key():
    import random

    import numpy as np
    import report

    from dermvlm.evaluation import metrics as M

    rng = random.Random(5)
    classes = ["akiec", "bcc", "mel", "nv"]
    prior = {"akiec": 0.1, "bcc": 0.1, "mel": 0.2, "nv": 0.6}
    a_runs, b_runs = {}, {}
    for seed in (0, 1, 2):
        ids = [f"x{i:04d}" for i in range(400)]
        gold = rng.choices(classes, weights=[prior[c] for c in classes], k=400)

        def scores(sharp: float, gold=gold):  # the gold class scores higher, and nv is favoured (majority bias)
            return [[round(sharp * (c == g) + 1.5 * (c == "nv") + rng.gauss(0, 1), 4) for c in classes] for g in gold]

        sa, sb = scores(2.5), scores(1.0)
        val_a = {"ids": ids, "gold": gold, "pred": gold, "classes": classes, "scores": scores(2.5)}
        pa = [classes[int(np.argmax(r))] for r in sa]
        pb = [classes[int(np.argmax(r))] for r in sb]
        order = list(range(400))
        rng.shuffle(order)  # b lists the same items in another order: pairing is by key, not position
        a_runs[seed] = _record("grpo_plus", seed, ids, gold, pa, sa, classes, val_a)
        b_runs[seed] = _record("sft_balanced", seed, [ids[i] for i in order], [gold[i] for i in order],
                               [pb[i] for i in order], [sb[i] for i in order], classes)
    v = report.view(a_runs[0])
    assert set(v["pred"]) == {"as_generated", "balanced", "accuracy"} and v["tau"]["balanced_accuracy"] > 0
    assert M.balanced_accuracy(v["gold"], v["pred"]["balanced"]) > M.balanced_accuracy(v["gold"],
                                                                                        v["pred"]["as_generated"])
    d = report.paired(a_runs, b_runs, ("scores", "auc"), n=200)
    direct = [report.stat_value(report.view(a_runs[s]), ("scores", "auc"))
              - report.stat_value(report.view(b_runs[s]), ("scores", "auc")) for s in (0, 1, 2)]
    assert d["per_seed"] == [round(x, 4) for x in direct] and d["items"] == [400, 400, 400]
    assert d["verdict"] == "holds" and d["item_ci95"][0] > 0 and d["seed_ci95"][0] > 0
    summary = report.summarize(a_runs, n_boot=100)
    assert summary["stats"]["scores:auc"]["item_ci95"][0] < summary["stats"]["scores:auc"]["mean"]


def test_a_recorded_run_is_not_run_again_and_its_base_only_while_needed(tmp_path):
    import records
    import run

    for name in ("s0-base", "s0-sft_only", "s1-base", "cnn-s0"):
        records.write(records.record_path("full", name, tmp_path), {"kind": "vlm", "code": {"code": "now"}})
    jobs = [("full/s0-base", None, None), ("full/s1-base", None, None),
            ("full/s0-sft_only", None, "full/s0-base"), ("full/cnn-s0", None, "full/s0-base"),
            ("full/s1-sft_only", None, "full/s1-base"), ("full/cnn-s1", None, "full/s1-base")]
    assert {n for n, _, _ in run.drop_recorded(jobs, tmp_path, code="older")} == {n for n, _, _ in jobs}
    todo = {n: dep for n, _, dep in run.drop_recorded(jobs, tmp_path, code="now")}
    # seed 0: all recorded, nothing runs; seed 1: the arm needs its base again (its folder may be gone); the CNN
    # needs only the data, so it waits for the base only because the base runs anyway.
    assert todo == {"full/s1-base": None, "full/s1-sft_only": "full/s1-base", "full/cnn-s1": "full/s1-base"}
    records.write(records.record_path("full", "s1-sft_only", tmp_path), {"kind": "vlm", "code": {"code": "now"}})
    assert {n: dep for n, _, dep in run.drop_recorded(jobs, tmp_path, code="now")} == {"full/cnn-s1": None}


def test_a_job_that_raises_fails_alone_and_the_run_still_ends(tmp_path):
    import threading

    import run

    def crashing():
        raise RuntimeError("record unreadable")

    jobs = [("full/s0-base", crashing, None), ("full/s0-sft_only", lambda: None, "full/s0-base"),
            ("full/s1-base", lambda: None, None), ("full/s1-sft_only", lambda: None, "full/s1-base")]
    statuses: dict = {}
    runner = threading.Thread(target=lambda: statuses.update(run.run_jobs(jobs, tmp_path, 2, records=False)),
                              daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "a job's exception left its dependents waiting forever"
    assert statuses["full/s0-base"]["rc"] != 0 and "record unreadable" in statuses["full/s0-base"]["error"]
    assert "RuntimeError: record unreadable" in Path(statuses["full/s0-base"]["log"]).read_text()  # kept for debugging
    assert statuses["full/s0-sft_only"]["skipped"] == "full/s0-base failed"
    assert statuses["full/s1-base"]["rc"] == statuses["full/s1-sft_only"]["rc"] == 0


def test_readme_tables_replace_only_their_block(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from readme_tables import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:begin -->\nold | table\n<!-- t:end -->\noutro\n")
    assert update_readme("t", "| new |\n", readme)
    assert readme.read_text() == "intro\n<!-- t:begin -->\n| new |\n<!-- t:end -->\noutro\n"
    assert not update_readme("missing", "x", readme)
    assert "| new |" in readme.read_text()


def test_cnn_anchor_fixed_work_selection_on_val_and_both_decodes(recipe_data, tmp_path):
    import json
    import subprocess
    import sys

    import report
    from datasets import load_from_disk

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "learning" / "cnn_baseline.py"
    out = tmp_path / "cnn.json"
    argv = [sys.executable, str(script), "--data", str(recipe_data), "--epochs", "2", "--batch-size", "8",
            "--eval-every", "2", "--side", "28", "--seed", "1", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    n_train = len(load_from_disk(str(recipe_data / "image_label"))["train"])
    assert result["steps"] == -(-2 * n_train // 8) and result["seed"] == 1 and "stride-2" in result["model"]
    assert result["selected_step"] in [s for s, _ in result["val_auc_curve"]]  # chosen on val, by AUC
    assert max(a for _, a in result["val_auc_curve"]) == pytest.approx(result["val"]["auc"], abs=1e-4)
    for split in ("val", "test"):
        part = result[split]
        assert part["n"] == len(part["ids"]) == len(part["scores"]) > 0
        assert len(part["scores"][0]) == len(result["classes"])
        assert set(part["decodes"]) >= {"as_generated", "prior_corrected_balanced_accuracy"}
    rec = {"kind": "cnn", "seed": 1, **result}
    assert set(report.view(rec)["pred"]) == {"as_generated", "balanced", "accuracy"}  # the VLM's decodes, same code


def test_a_run_started_by_other_code_is_set_aside_not_reused(tmp_path):
    import records
    import run

    old, mine = tmp_path / "full" / "s0-grpo_plus", tmp_path / "full" / "s1-grpo_plus"
    for folder, code in ((old, "older"), (mine, run.CODE["code"])):
        (folder / "grpo").mkdir(parents=True)
        records.mark_code(folder, {"code": code})
    run.set_aside_other_code(old)
    run.set_aside_other_code(mine)
    assert not old.exists() and (tmp_path / "full" / ".other-code" / "older" / "s0-grpo_plus" / "grpo").is_dir()
    assert mine.is_dir() and run.same_code(mine) and not run.same_code(old)
    records.mark_code(mine, {"code": "later"})  # a resumed run keeps the code it started with
    assert records.run_code(mine)["code"] == run.CODE["code"]


def test_the_ssl_base_and_its_arm_are_valid_configs(tmp_path):
    base = validate(arms.base_run_config("low_resource", 1, tmp_path, variant="base_ssl"), RunConfig)
    assert [(s.name, s.kind) for s in base.stages] == [("ssl", "vision"), ("vision", "vision"), ("pretrain", "sft")]
    ssl = base.stages[0]
    assert ssl.self_supervised.recipe == arms.REGIMES["full"] and not ssl.supervised  # the unlabelled rest
    arm = validate(arms.arm_config("grpo_plus", "low_resource", 1, tmp_path, base="base_ssl"), RunConfig)
    assert arm.name == "s1-base_ssl-grpo_plus"
    assert arm.model.name_or_path.endswith("low_resource/s1-base_ssl/pretrain/model")


def test_regimes_computed_in_parallel_give_the_same_report(tmp_path):
    import random

    import report
    from records import write

    rng = random.Random(7)
    classes = ["bcc", "mel", "nv"]
    for regime in ("full", "low_resource"):
        for arm in ("grpo_plus", "sft_balanced"):
            for seed in (0, 1):
                ids = [f"{regime}-{i:03d}" for i in range(120)]
                gold = rng.choices(classes, weights=[1, 2, 6], k=120)
                scores = [[round(2.0 * (c == g) + rng.gauss(0, 1), 4) for c in classes] for g in gold]
                pred = [classes[max(range(3), key=r.__getitem__)] for r in scores]
                rec = _record(arm, seed, ids, gold, pred, scores, classes) | {"regime": regime}
                write(tmp_path / "records" / regime / f"s{seed}-{arm}.json.gz", rec)
    one = report.regime_results(tmp_path / "records", tmp_path / "plots1", 20, jobs=1)
    two = report.regime_results(tmp_path / "records", tmp_path / "plots2", 20, jobs=2)
    assert set(one) == {"full", "low_resource"}
    assert one["low_resource"]["comparisons"] and one["full"]["arms"]["grpo_plus"]["stats"]["scores:auc"]["item_ci95"]

    def without_plots(r):
        return {regime: {k: v for k, v in res.items() if k != "plots"} for regime, res in r.items()}

    assert without_plots(one) == without_plots(two)
    assert [Path(p).name for p in one["full"]["plots"]] == [Path(p).name for p in two["full"]["plots"]]


def test_a_cnn_after_simclr_is_charged_for_both_parts_of_its_training():
    import report

    assert report._seconds({"kind": "cnn", "cpu_seconds": 3462.3, "ssl": {"cpu_seconds": 3693.8}}) == 7156.1
    assert report._seconds({"kind": "cnn", "cpu_seconds": 3221.2}) == 3221.2
