"""Training stages on real TRL trainers and real images: rewards, GRPO++ parts, KG-preference DPO, pipeline resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from dermvlm.config import ConfigError, load_config, make_stage
from dermvlm.training import rewards as R
from dermvlm.training.common import recipe_dataset

ROOT = Path(__file__).resolve().parents[1]


def msg(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------ rewards


def test_rewards_on_crafted_completions():
    cols = {"label": ["melanoma"] * 5, "options": [[]] * 5, "answer": ["melanoma"] * 5,
            "question_type": ["open"] * 5, "site": [""] * 5, "fitzpatrick": [0] * 5}
    completions = [
        msg("<think>A dark brown plaque with irregular border and blue-whitish veil.</think><answer>melanoma</answer>"),
        msg("<think>A brown macule.</think><answer>dysplastic nevus</answer>"),  # sibling branch
        msg("<think>Silvery scale on the elbows.</think><answer>psoriasis</answer>"),  # unrelated
        msg("melanoma probably"),  # malformed
        msg("<think>" + "brown " * 200 + "</think><answer>melanoma</answer>"),  # overlong
    ]
    assert R.format_reward(None, completions) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert R.exact_reward(None, completions, **cols) == [1.0, 0.0, 0.0, 0.0, 1.0]
    credit = R.partial_credit_reward(None, completions, **cols)
    assert credit[0] == 1.0 and 0 < credit[1] < 1 and credit[2] == 0.0 and credit[3] == 0.0
    consistency = R.reasoning_consistency_reward(None, completions, **cols)
    # melanoma's textbook features stated as findings, with no record to decide them: no credit
    assert consistency[0] == 0.0 and consistency[3] == 0.0
    kg = R.kg_score_reward(None, completions, **cols)
    assert kg[0] > kg[1] > kg[2] and kg[3] <= kg[0]
    overlong = R.make_overlong_reward(64, 16)
    ids = [list(range(n)) for n in (10, 48, 56, 64, 80)]
    assert overlong(None, completions, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_mcq_rewards_use_the_letter():
    cols = {"label": ["melanoma"] * 3, "options": [["melanocytic nevus", "melanoma", "psoriasis"]] * 3,
            "answer": ["B"] * 3, "question_type": ["mcq"] * 3, "site": [""] * 3, "fitzpatrick": [0] * 3}
    completions = [msg("<answer>B. melanoma</answer>"), msg("<answer>A</answer>"), msg("<answer>C</answer>")]
    assert R.exact_reward(None, completions, **cols) == [1.0, 0.0, 0.0]
    credit = R.partial_credit_reward(None, completions, **cols)
    assert credit[0] == 1.0 and credit[1] > credit[2] == 0.0


# ------------------------------------------------------------------ GRPO++ parts


@pytest.fixture(scope="module")
def grpo_data(recipe_data):
    return recipe_dataset(recipe_data, ["grpo_prompt"])


def test_sampler_interleaves_classes_sweeps_difficulty_and_keeps_shares():
    from dermvlm.training.grpo.sampler import PlannedSampler, class_shares, plan_prompts

    labels = ["nv"] * 670 + ["mel"] * 110 + ["bkl"] * 110 + ["bcc"] * 50 + ["akiec"] * 30 + ["vasc"] * 20 + ["df"] * 10
    # a difficulty that is constant per class would sort the old way into single-class blocks: give each class one
    difficulty = [{"nv": 0.1, "mel": 0.9, "bkl": 0.5, "bcc": 0.6, "akiec": 0.8, "vasc": 0.3, "df": 0.95}[lab]
                  + (i % 97) / 1000 for i, lab in enumerate(labels)]
    n = 400
    plan = plan_prompts(labels, n, seed=0, balance=0.5, difficulty=difficulty)
    drawn = [labels[i] for i in plan]
    runs = [len(list(g)) for _, g in itertools.groupby(drawn)]
    assert max(runs) <= 2  # never a block of one class
    for window in range(0, n, 40):  # every stretch of 40 prompts sees every class
        assert len(set(drawn[window:window + 40])) == 7
    shares = class_shares(labels, 0.5)
    counts = Counter(drawn)
    for c, q in shares.items():
        assert abs(counts[c] / n - q) <= 1 / n + 1e-9  # the draw holds its square-root shares
    assert shares["df"] / shares["nv"] == pytest.approx((10 / 670) ** 0.5)
    for c in shares:  # within a class: one easy → hard sweep over training
        seq = [difficulty[i] for i in plan if labels[i] == c]
        assert seq == sorted(seq)
    assert plan == plan_prompts(labels, n, seed=0, balance=0.5, difficulty=difficulty)  # seeded
    natural = Counter(labels[i] for i in plan_prompts(labels, 1000, seed=0, balance=0.0))
    assert natural["nv"] == 670 and natural["df"] == 10
    sampler = PlannedSampler(plan[:8], mini_repeat_count=4, batch_size=2, repeat_count=2)
    out = list(sampler)
    assert len(out) == len(sampler) == 8 * 4 * 2
    assert out[:16] == [plan[0]] * 4 + [plan[1]] * 4 + [plan[0]] * 4 + [plan[1]] * 4  # TRL's RepeatSampler layout


def test_rarity_weighted_advantages_by_hand():
    from dermvlm.training.grpo.sampler import class_shares, rarity_weights

    shares = class_shares(["a"] * 9 + ["b"], balance=0.5)  # q ∝ sqrt(n): 3 : 1
    assert shares == pytest.approx({"a": 0.75, "b": 0.25})
    w = rarity_weights(shares)
    assert w == pytest.approx({"a": (1 / 2) / 0.75, "b": (1 / 2) / 0.25})  # 2/3 and 2
    assert sum(shares[c] * w[c] for c in w) == pytest.approx(1.0)  # mean weight 1 under the draw
    # expected weighted reward == balanced accuracy: class a always right, class b always wrong
    expected = sum(shares[c] * w[c] * {"a": 1.0, "b": 0.0}[c] for c in w)
    assert expected == pytest.approx(0.5)


def test_hint_schedule_fades():
    from dermvlm.training.grpo.trainer import hint_probability, with_hint

    assert [hint_probability(p, 0.5) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.5, 0.0, 0.0]
    prompt = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Q?"}]}]
    assert with_hint(prompt, "Hint: x.")[0]["content"][1]["text"] == "Q? Hint: x."
    assert prompt[0]["content"][1]["text"] == "Q?"  # the row itself is not changed


def test_closed_set_partial_credit_pays_no_competing_class():
    cols = {"label": ["melanoma"] * 4, "options": [[]] * 4, "answer": ["melanoma"] * 4,
            "question_type": ["open"] * 4, "site": [""] * 4, "fitzpatrick": [0] * 4}
    completions = [msg("<answer>melanocytic nevus</answer>"), msg("<answer>melanoma</answer>"),
                   msg("<answer>dysplastic nevus</answer>"), msg("<answer>psoriasis</answer>")]
    open_world = R.partial_credit_reward(None, completions, **cols)
    assert open_world[0] > 0  # the old rule: the majority class earns credit on a melanoma
    closed = R.make_partial_credit_reward(["melanoma", "melanocytic_nevus", "basal_cell_carcinoma"])
    credit = closed(None, completions, **cols)
    assert credit[0] == 0.0 and credit[1] == 1.0  # a competing class is a wrong answer
    assert credit[2] == open_world[2] > 0  # a related disease outside the class set keeps its near-miss credit
    assert credit[3] == 0.0


def test_flat_groups_are_dropped_for_same_class_alternates_generated_with_them(trained_run, grpo_data, tmp_path):
    from dermvlm.training.grpo import grpo_config
    from dermvlm.training.grpo.trainer import make_trainer_class

    def flat_when_marked(prompts, completions, answer, **kwargs):
        # 0.9: a flat reward whose group mean is not exact in float32 (TRL's advantages come out ~1e-3, not 0)
        return [0.9 if a == "FLAT" else float(len(R.completion_text(c)) % 7) for c, a in
                zip(completions, answer, strict=True)]

    spec = trained_run["spec"]
    stage = make_stage(name="g", kind="grpo", use_lora=False, trl={"max_steps": 1, "num_generations": 8,
                                                                    "per_device_train_batch_size": 16,
                                                                    "max_completion_length": 24})
    args = grpo_config(stage, tmp_path, 0, "test")
    from dermvlm.models.loading import load_model

    model, processor = load_model(spec, trained_run["base"])
    labels = sorted(set(grpo_data["label"]))
    trainer = make_trainer_class()(model=model, reward_funcs=[flat_when_marked], args=args,
                                   train_dataset=grpo_data, processing_class=processor, zero_variance_filter=True,
                                   max_resample_rounds=2, replacement_pool=grpo_data,
                                   class_weights={lab: 1.0 + i for i, lab in enumerate(labels)})
    trainer.model.train()
    first = next(r for r in grpo_data if r["label"] == labels[0])
    second = next(r for r in grpo_data if r["label"] == labels[1])
    batch = [{**first, "answer": "FLAT"}] * 8 + [second] * 8  # group 0 is flat by construction
    out = trainer._generate_and_score_completions(batch)
    metrics = trainer._metrics["train"]
    assert metrics["zero_variance/frac_before"][-1] == 0.5
    assert metrics["zero_variance/frac_after"][-1] == 0.0 and metrics["zero_variance/alternates_used"][-1] == 0.5
    adv = out["advantages"].view(-1, 8)
    assert all(bool((row.abs() > 1e-8).any()) for row in adv)  # every group kept carries signal
    # group 0's alternate came from its own class: its rarity weight (1.0) is the one applied
    assert metrics["rarity/weight_mean"][-1] == pytest.approx((1.0 * 8 + 2.0 * 8) / 16)
    n = len(batch)  # the planned size: alternates were generated with the batch and dropped again
    assert out["prompt_ids"].shape[0] == out["completion_ids"].shape[0] == n
    assert out["prompt_mask"].shape == out["prompt_ids"].shape
    assert out["image_grid_thw"].shape[0] == n and len(out["num_images"]) == n
    assert out["pixel_values"].shape[0] == int(out["image_grid_thw"].prod(-1).sum())
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop when train() runs
    loss = trainer.compute_loss(trainer.model, out)  # the selected batch trains
    assert torch.isfinite(loss)


def test_trl_generation_output_contract(trained_run, grpo_data, tmp_path):
    """What ``select_rows`` relies on, pinned to the installed TRL: ``_generate_and_score_completions`` takes the
    rows and returns one dict whose values, after ``split_pixel_values_by_grid``, are per row along their first
    axis (lists and tensors) or 0-d per-batch tensors, with ``advantages``, ``completion_mask`` and
    ``num_items_in_batch`` among them; TRL's own shuffle-and-split of the selection trains. A new TRL that breaks
    this fails here first (re-check trainer.py, then update the pin)."""
    import trl
    from trl.trainer.utils import (
        shuffle_sequence_dict,
        split_pixel_values_by_grid,
        split_tensor_dict,
        unsplit_pixel_values_by_grid,
    )

    from dermvlm.models.loading import load_model
    from dermvlm.training.grpo import grpo_config
    from dermvlm.training.grpo.trainer import keep_with_signal, make_trainer_class, select_rows

    assert trl.__version__ == "1.16.0", "TRL changed: re-check the generation output contract, then update the pin"
    stage = make_stage(name="g", kind="grpo", use_lora=False, trl={"max_steps": 1, "num_generations": 4,
                                                                    "per_device_train_batch_size": 12,
                                                                    "max_completion_length": 16})
    model, processor = load_model(trained_run["spec"], trained_run["base"])
    trainer = make_trainer_class()(model=model, reward_funcs=[lambda completions, **k: [float(len(
        R.completion_text(c)) % 3) for c in completions]], args=grpo_config(stage, tmp_path, 0, "test"),
        train_dataset=grpo_data, processing_class=processor)
    trainer.model.train()
    rows = [grpo_data[i] for i in range(3) for _ in range(4)]
    out = trainer._generate_and_score_completions(rows)
    assert {"advantages", "completion_mask", "num_items_in_batch", "prompt_ids", "completion_ids"} <= set(out)
    split = split_pixel_values_by_grid(out)
    for key, value in split.items():
        per_row = (isinstance(value, list) and len(value) == 12) or (hasattr(value, "ndim") and value.ndim >= 1
                                                                     and value.shape[0] == 12)
        assert value is None or per_row or (hasattr(value, "ndim") and value.ndim == 0), key
    assert keep_with_signal(2, 2, {0, 2, 1}) == [4, 3] and keep_with_signal(2, 1, {0, 2}) == [0, 1]
    picked = select_rows(out, list(range(4, 12)), lambda m: m.sum())
    assert picked["completion_ids"].shape[0] == 8 and torch.equal(picked["completion_ids"], out["completion_ids"][4:])
    assert torch.equal(picked["pixel_values"], torch.cat(split["pixel_values"][4:]))
    trainer.current_gradient_accumulation_steps = 1
    for chunk in split_tensor_dict(shuffle_sequence_dict(split_pixel_values_by_grid(picked)), 2):
        assert torch.isfinite(trainer.compute_loss(trainer.model, unsplit_pixel_values_by_grid(chunk)))


def test_plain_grpo_is_the_deepseekmath_loss_and_plus_passes_are_real(tmp_path):
    from dermvlm.training.grpo import grpo_config

    plain = grpo_config(make_stage(name="g", kind="grpo"), tmp_path, 0, "t")
    assert (plain.loss_type, plain.beta, plain.num_iterations, plain.epsilon) == ("grpo", 0.04, 1, 0.2)
    assert plain.epsilon_high is None  # symmetric: TRL uses epsilon for both sides
    plus = grpo_config(make_stage(name="g", kind="grpo", plus={}), tmp_path, 0, "t")
    assert plus.loss_type == "dapo" and plus.num_iterations == 2 and plus.epsilon_high == 0.28


def test_grpo_plus_stage_with_lora_ref_sync_logs_everything(trained_run, grpo_data, tmp_path):
    from dermvlm.training.grpo import run_grpo

    stage = make_stage(name="grpo", kind="grpo", use_lora=True,
                      plus={"ref_sync_steps": 1, "ref_sync_alpha": 0.5, "max_resample_rounds": 1},
                      trl={"max_steps": 2, "num_generations": 4, "per_device_train_batch_size": 8,
                           "max_completion_length": 48})
    result = run_grpo(stage, trained_run["spec"], trained_run["base"], grpo_data, tmp_path / "grpo")
    logged = result.log_history[0]
    for key in ("reward", "rewards/format_reward/mean", "rewards/partial_credit_reward/mean",
                "rewards/reasoning_consistency_reward/mean", "rewards/overlong_reward/mean", "frac_reward_zero_std",
                "zero_variance/frac_before", "zero_variance/frac_after", "clip_ratio/region_mean", "kl", "entropy",
                "completions/mean_length"):
        assert key in logged, key
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not (result.adapter_dir / "ref").exists()  # the reference adapter is not shipped
    # the curriculum scored the prompts with the model the trainer placed, once, and kept the plan for a resume
    plan = json.loads((tmp_path / "grpo" / "plan.json").read_text())
    assert plan["info"]["difficulty_scored"] > 0 and result.extra["plan"]["difficulty_scored"] > 0
    assert len(plan["plan"]) == result.extra["plan"]["prompts"] and None not in plan["plan"]
    assert (result.model_dir / "model.safetensors").is_file() and (tmp_path / "grpo" / "curves.png").is_file()


def test_dpo_policy_pairs_ranked_by_kg_with_margin(trained_run, grpo_data, tmp_path):
    from dermvlm.training.dpo import run_dpo

    stage = make_stage(name="dpo", kind="dpo", pairs_from="policy", policy_samples=4, min_margin=0.1, max_prompts=8,
                      sample_max_new_tokens=80, trl={"max_steps": 2})
    result = run_dpo(stage, trained_run["spec"], trained_run["base"], grpo_data, tmp_path / "dpo")
    stats = json.loads((tmp_path / "dpo" / "pairs_stats.json").read_text())
    assert stats["sampler"] == "transformers" and stats["prompts"] == 8 and stats["pairs"] >= 1
    from datasets import load_from_disk

    pairs = load_from_disk(str(tmp_path / "dpo" / "pairs"))
    for c, r in zip(pairs["chosen_score"], pairs["rejected_score"], strict=True):
        assert c - r >= 0.1
    assert len(result.losses()) == 2


def test_recipe_pairs_dpo_changes_weights(trained_run, recipe_data, tmp_path):
    from safetensors.torch import load_file

    from dermvlm.training.dpo import run_dpo

    pairs = recipe_dataset(recipe_data, ["preference_pair"])
    stage = make_stage(name="dpo", kind="dpo", use_lora=True, trl={"max_steps": 3, "learning_rate": 1e-3})
    result = run_dpo(stage, trained_run["spec"], trained_run["base"], pairs, tmp_path / "dpo")
    before = load_file(str(trained_run["base"] / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    key = next(k for k in before if "layers.0.self_attn.q_proj.weight" in k)
    assert not torch.equal(before[key], after[key])
    stats = json.loads((tmp_path / "dpo" / "pairs_stats.json").read_text())
    assert stats["pairs_from"] == "recipe" and stats["mean_margin"] > 0


# ------------------------------------------------------------------ config errors before training


def run_config(tmp_path: Path, stages: list[dict]) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "nano-cpu.yaml").read_text())
    cfg.update(output_dir=str(tmp_path / "runs"), stages=stages)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize(("stage", "message"), [
    ({"name": "g", "kind": "grpo", "trl": {"num_generations": 3, "per_device_train_batch_size": 8}},
     r"stages\[0\] \(g\)\.trl: GRPOConfig rejects these settings: generation_batch_size \(8\) must be divisible by "
     r"num_generations \(3\)"),
    ({"name": "g", "kind": "grpo", "trl": {"loss_type": "dappo"}}, r"\.trl\.loss_type: 'dappo' is not one of grpo"),
    ({"name": "g", "kind": "grpo", "trl": {"scale_rewards": "maybe"}}, r"scale_rewards: 'maybe' is not one of"),
    ({"name": "g", "kind": "grpo", "trl": {"num_generation": 4}}, r"unknown GRPOConfig field 'num_generation' "
                                                                  r"\(did you mean 'num_generations'\?\)"),
    ({"name": "d", "kind": "dpo", "trl": {"betta": 0.1}}, r"unknown DPOConfig field 'betta' \(did you mean 'beta'"),
])
def test_bad_stage_settings_fail_before_training(tmp_path, stage, message):
    from dermvlm.pipeline import run_pipeline

    p = run_config(tmp_path, [stage])
    with pytest.raises(ConfigError, match=message):
        run_pipeline(load_config(p), str(p))
    assert not (tmp_path / "runs" / "nano-cpu" / "data").exists()  # nothing was built or trained


def test_schema_errors_for_stage_fields(tmp_path):
    p = run_config(tmp_path, [{"name": "s", "kind": "sft", "plus": {}}])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.plus: unknown key 'plus'"):
        load_config(p)
    p = run_config(tmp_path, [{"name": "g", "kind": "grpo", "rewards": {"exactt": 1.0}}])
    with pytest.raises(ConfigError, match="unknown reward\\(s\\) exactt; allowed: answer_only, exact, format"):
        load_config(p)


# ------------------------------------------------------------------ pipeline: chaining and kill -9 resume


def test_pipeline_kill9_mid_stage_resumes_and_chains_weights(tmp_path):
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parent))
    from test_cli_and_demo import small_config

    cfg_path = small_config(tmp_path, {"pretrain": 60, "grpo": 2, "sft": 3, "dpo": 2},
                            pretrain={"save_steps": 10})
    cmd = [sys.executable, "-m", "dermvlm.cli", "pipeline", str(cfg_path)]
    run = tmp_path / "runs" / "nano-cpu"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "pretrain" / "checkpoints" / "checkpoint-20").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "pipeline ended before the first checkpoints"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "pretrain" / "done.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((run / "pretrain" / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps[-1] == 60 and steps[0] == 1  # resumed from a checkpoint: the history runs on, whole
    for stage in ("pretrain", "grpo", "sft", "dpo"):
        assert (run / stage / "done.json").is_file() and (run / stage / "model" / "model.safetensors").is_file()
    assert (run / "dpo" / "model" / "README.md").is_file()
    def q_proj(stage: str):
        tensors = load_file(str(run / stage / "model" / "model.safetensors"))
        return next(v for k, v in tensors.items() if k.endswith("layers.0.self_attn.q_proj.weight"))

    weights = [q_proj(s) for s in ("pretrain", "grpo", "sft", "dpo")]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(weights))  # each stage moved them
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["grpo"]["reward_end"] is not None and manifest["stages"]["pretrain"]["peak_rss_mb"] > 100
