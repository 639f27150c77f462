"""The learning benchmark's regimes and arms (v3), derived from ``configs/dermamnist-micro.yaml``.

Regimes: ``full`` (DermaMNIST's train split) and ``low_resource`` (a stratified, seeded 10% of it), each with its
own recipe. Per regime and seed one **base** is trained (the config's ``vision`` stage, then the language
``pretrain``), and every arm of that seed starts from it and spends the same post-training budget of ``BUDGET``
training sequences (an SFT row, a generated GRPO completion, half a DPO pair):

- ``sft_only``: more SFT on the same rows (shuffled: the natural class mix);
- ``sft_balanced``: the same SFT with GRPO++'s class draw (``class_balanced``): the fair control, so that
  ``grpo_plus − sft_balanced`` isolates what RL adds;
- ``plain_grpo``: the DeepSeekMath GRPO loss (``loss_type: grpo``, KL 0.04, one pass per generation, shuffled);
- ``grpo_plus``: GRPO++ as configured (``plus:``);
- ``grpo_nothink``: GRPO++ rewarded for answering only (``<answer>…</answer>``, no reasoning; Med-R1's finding);
- ``dermiq``: the DermIQ order, GRPO++ (1/2) → class-balanced SFT on reasoning traces with recognition replay
  (1/4) → DPO on class-balanced, KG-ranked policy pairs (1/4); the model before its DPO is asked the
  ``kg_factuality`` suite too, so the DPO stage's effect on knowledge errors is measured;
- ablations: GRPO++ with exactly one switch flipped (``no_<switch>``, or ``with_hints`` for the one switch that is
  off by default): one seed, never a claim, off unless asked (``run.py --ablations ...``).

The CNN anchor (``cnn_baseline.py``) trains a fixed number of epochs per regime (``CNN_EPOCHS``), the same on every
seed, chosen so that its CPU time is about a base plus a post-training arm (``README.md``: compute).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = ROOT / "configs" / "dermamnist-micro.yaml"
BUDGET = 3200  # post-training sequences per arm
REGIMES = {"full": "data_recipes/dermamnist_learning.yaml",
           "low_resource": "data_recipes/dermamnist_learning_low.yaml"}
MAIN_ARMS = ["sft_only", "sft_balanced", "plain_grpo", "grpo_plus", "grpo_nothink", "dermiq"]
# The no-thinking arm answers a low-resource question (item 6 of the v3 issue): it runs there only, which keeps the
# benchmark's cost down (README: compute, which estimates the whole at about 12.6 hours on 2 cores).
REGIME_ARMS = {"full": [a for a in MAIN_ARMS if a != "grpo_nothink"], "low_resource": list(MAIN_ARMS)}
# GRPO++ switches and the value that flips each (DESIGN.md: GRPO++).
SWITCHES: dict[str, dict[str, Any]] = {
    "no_clip_higher": {"clip_higher": None},
    "no_token_level_loss": {"token_level_loss": False},
    "no_zero_variance_filter": {"zero_variance_filter": False},
    "no_ref_sync": {"ref_sync": False},
    "no_curriculum": {"curriculum": False},
    "with_hints": {"hints": True},
    "no_class_balanced": {"class_balanced": False},
    "no_rarity_weight": {"rarity_weight": False},
}
ABLATIONS = list(SWITCHES)
ABLATION_SEED = 2  # the seed the v2 ablations ran on
# Per-regime settings of the base: the low-resource split has a tenth of the images, so its vision stage runs more
# epochs over them and its language pretrain fewer steps (the same rows would otherwise repeat ~27 times).
REGIME_BASE = {"full": {}, "low_resource": {"vision": {"num_train_epochs": 60}, "pretrain": {"max_steps": 300}}}
# The CNN's epochs per regime: fixed work, about the CPU seconds of a base plus one post-training arm.
CNN_EPOCHS = {"full": 60, "low_resource": 300}
# The optional align stage (LLaVA stage 1: projector only, on short captions), run as a base variant to decide
# whether it earns its place.
ALIGN_STAGE = {"name": "align", "kind": "align", "data": ["caption"],
               "trl": {"max_steps": 150, "learning_rate": 1.0e-3, "per_device_train_batch_size": 32,
                       "save_steps": 75, "logging_steps": 10, "gradient_checkpointing": False}}
BASE_VARIANTS = {"base_align": "vision → align → pretrain",
                 "base_ssl": "self-supervised vision on the unlabelled rest of the train split → vision → pretrain"}
# The lab with few labels but every image (low-resource regime): SimCLR on the images the 10% leaves unlabelled
# (the full regime's train split, labels dropped), then the supervised vision stage on the 700.
SSL_STAGE = {"name": "ssl", "kind": "vision", "supervised": False, "contrastive": False,
             "self_supervised": {"recipe": "data_recipes/dermamnist_learning.yaml"},
             "trl": {"num_train_epochs": 5, "per_device_train_batch_size": 64, "learning_rate": 1.0e-3,
                     "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 50, "save_steps": 100,
                     "logging_steps": 20}}
SSL_CNN_EPOCHS = 20  # the CNN's SimCLR epochs over the same unlabelled images
FACTUALITY_SUITE = "eval/kg_factuality.yaml"
# The arm that answers only: GRPO++ rewarded for the closed-set answer in <answer> tags and nothing else.
NOTHINK_REWARDS = {"partial_credit": 1.0, "answer_only": 0.1}


def base_config(regime: str = "full") -> dict[str, Any]:
    cfg = yaml.safe_load(BASE_CONFIG.read_text())
    cfg["data"]["recipe"] = REGIMES[regime]
    return cfg


def _stage(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return copy.deepcopy(next(s for s in cfg["stages"] if s["name"] == name))


def _steps_for(stage: dict[str, Any], sequences: int) -> dict[str, Any]:
    """Set ``max_steps`` so that the stage spends ``sequences`` training sequences (GRPO: generated completions,
    each used for ``iterations`` optimizer passes)."""
    per_step = stage["trl"]["per_device_train_batch_size"] * (2 if stage["kind"] == "dpo" else 1)
    passes = (stage.get("plus") or {}).get("iterations", 2) if stage["kind"] == "grpo" and stage.get("plus") else 1
    stage["trl"]["max_steps"] = max(1, sequences // per_step) * passes
    stage["trl"]["save_steps"] = max(1, stage["trl"]["max_steps"] // 2)
    return stage


def arm_stages(arm: str, budget: int = BUDGET) -> list[dict[str, Any]]:
    cfg = base_config()
    grpo, sft, dpo = _stage(cfg, "grpo"), _stage(cfg, "sft"), _stage(cfg, "dpo")
    if arm == "base":
        return []
    if arm == "sft_only":
        return [_steps_for(sft, budget)]
    if arm == "sft_balanced":
        sft.update(name="sft_balanced", class_balanced=True, balance=grpo["plus"]["balance"])
        return [_steps_for(sft, budget)]
    if arm == "plain_grpo":
        grpo["plus"] = None
        grpo["name"] = "plain_grpo"
        return [_steps_for(grpo, budget)]
    if arm == "grpo_plus":
        return [_steps_for(grpo, budget)]
    if arm == "grpo_nothink":
        grpo.update(name="grpo_nothink", rewards=dict(NOTHINK_REWARDS))
        return [_steps_for(grpo, budget)]
    if arm == "dermiq":
        sft.update(class_balanced=True, balance=grpo["plus"]["balance"], data=["reasoning_trace", "open_diagnosis"])
        # its SFT teaches reasoning (class knowledge in <think>): the DPO samples must be long enough to hold it
        dpo.update(class_balanced=True, balance=grpo["plus"]["balance"], sample_max_new_tokens=96)
        return [_steps_for(grpo, budget // 2), _steps_for(sft, budget // 4), _steps_for(dpo, budget // 4)]
    if arm in SWITCHES:
        grpo["plus"].update(SWITCHES[arm])
        grpo["name"] = f"grpo_{arm}"
        return [_steps_for(grpo, budget)]
    raise KeyError(f"unknown arm {arm!r}; arms: base, {', '.join(MAIN_ARMS + ABLATIONS)}")


def base_run_config(regime: str, seed: int, out_root: Path, pretrain_steps: int | None = None,
                    variant: str = "base", vision_epochs: float | None = None) -> dict[str, Any]:
    """The shared start of a regime and seed: the micro model built with this seed, its vision stage, then the
    language pretrain; ``variant`` ``base_align`` puts the align stage between them."""
    cfg = base_config(regime)
    cfg["name"] = f"s{seed}-{variant}"
    cfg["seed"] = seed
    cfg["output_dir"] = str(out_root / regime)
    cfg["model"]["nano"]["seed"] = seed
    vision, pre = _stage(cfg, "vision"), _stage(cfg, "pretrain")
    vision["trl"].update(REGIME_BASE[regime].get("vision", {}))
    pre["trl"].update(REGIME_BASE[regime].get("pretrain", {}))
    if pretrain_steps:
        pre["trl"]["max_steps"] = pretrain_steps
    if vision_epochs:
        vision["trl"]["num_train_epochs"] = vision_epochs
    pre["trl"]["save_steps"] = max(1, pre["trl"]["max_steps"] // 3)
    extra = {"base_align": ([], [copy.deepcopy(ALIGN_STAGE)]), "base_ssl": ([copy.deepcopy(SSL_STAGE)], [])}
    before, between = extra.get(variant, ([], []))
    cfg["stages"] = [*before, vision, *between, pre]
    return cfg


def arm_config(arm: str, regime: str, seed: int, out_root: Path, budget: int = BUDGET, base: str = "base"
               ) -> dict[str, Any]:
    """An arm of a regime and seed: its stages, starting from that seed's base model (``base``: a base variant's,
    the run then named ``s<seed>-<variant>-<arm>``); the DermIQ arm is also asked the KG factuality suite."""
    cfg = base_config(regime)
    cfg["name"] = f"s{seed}-{arm}" if base == "base" else f"s{seed}-{base}-{arm}"
    cfg["seed"] = seed
    cfg["output_dir"] = str(out_root / regime)
    start = out_root / regime / f"s{seed}-{base}" / "pretrain" / "model"
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "nano"} | {"name_or_path": str(start)}
    cfg["stages"] = arm_stages(arm, budget)
    if arm == "dermiq":
        cfg["evaluate"] = [*cfg["evaluate"], FACTUALITY_SUITE]
    return cfg
