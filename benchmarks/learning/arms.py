"""The learning benchmark's arms, derived from ``configs/dermamnist-micro.yaml``.

Every arm starts from the same pretrained micro model of its seed (the config's ``pretrain`` stage, full parameters,
from scratch) and then spends the same post-training budget of ``BUDGET`` optimizer sequences (an SFT row, a GRPO
completion, half a DPO pair):

- ``pretrain``: the shared start, no post-training (for reference);
- ``sft_only``: more SFT on the same rows;
- ``plain_grpo``: GRPO with TRL's defaults (``plus: null``), same rewards and generations;
- ``grpo_plus``: GRPO++ with every switch on;
- ``dermiq``: the DermIQ order, GRPO++ (1/2) → SFT (1/4) → DPO on KG-ranked policy pairs (1/4);
- ``no_<switch>``: GRPO++ with one switch off (ablations, one seed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = ROOT / "configs" / "dermamnist-micro.yaml"
BUDGET = 3200  # post-training optimizer sequences per arm
MAIN_ARMS = ["sft_only", "plain_grpo", "grpo_plus", "dermiq"]
# GRPO++ switches and the value that turns each off (DESIGN.md: GRPO++).
SWITCHES: dict[str, dict[str, Any]] = {
    "clip_higher": {"clip_higher": None},
    "token_level_loss": {"token_level_loss": False},
    "zero_variance_filter": {"zero_variance_filter": False},
    "ref_sync": {"ref_sync": False, "kl_beta": 0.0},
    "curriculum": {"curriculum": False},
    "hints": {"hints": False},
    "class_balanced": {"class_balanced": False},
}
ABLATIONS = [f"no_{s}" for s in SWITCHES]


def base_config() -> dict[str, Any]:
    return yaml.safe_load(BASE_CONFIG.read_text())


def _stage(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return copy.deepcopy(next(s for s in cfg["stages"] if s["name"] == name))


def _steps_for(stage: dict[str, Any], sequences: int) -> dict[str, Any]:
    """Set ``max_steps`` so that the stage spends ``sequences`` optimizer sequences."""
    per_step = stage["trl"]["per_device_train_batch_size"] * (2 if stage["kind"] == "dpo" else 1)
    stage["trl"]["max_steps"] = max(1, sequences // per_step)
    stage["trl"]["save_steps"] = max(1, stage["trl"]["max_steps"] // 2)
    return stage


def arm_stages(arm: str, budget: int = BUDGET) -> list[dict[str, Any]]:
    cfg = base_config()
    grpo, sft, dpo = _stage(cfg, "grpo"), _stage(cfg, "sft"), _stage(cfg, "dpo")
    if arm == "pretrain":
        return []
    if arm == "sft_only":
        return [_steps_for(sft, budget)]
    if arm == "plain_grpo":
        grpo["plus"] = None
        grpo["name"] = "plain_grpo"
        return [_steps_for(grpo, budget)]
    if arm == "grpo_plus":
        return [_steps_for(grpo, budget)]
    if arm == "dermiq":
        return [_steps_for(grpo, budget // 2), _steps_for(sft, budget // 4), _steps_for(dpo, budget // 4)]
    if arm.startswith("no_") and arm[3:] in SWITCHES:
        grpo["plus"].update(SWITCHES[arm[3:]])
        grpo["name"] = f"grpo_{arm}"
        return [_steps_for(grpo, budget)]
    raise KeyError(f"unknown arm {arm!r}; arms: pretrain, {', '.join(MAIN_ARMS + ABLATIONS)}")


def pretrain_config(seed: int, out_root: Path, pretrain_steps: int | None = None) -> dict[str, Any]:
    """The shared start of a seed: the micro model built with this seed, trained by the ``pretrain`` stage."""
    cfg = base_config()
    cfg["name"] = f"s{seed}-pretrain"
    cfg["seed"] = seed
    cfg["output_dir"] = str(out_root)
    cfg["model"]["nano"]["seed"] = seed
    pre = _stage(cfg, "pretrain")
    if pretrain_steps:
        pre["trl"]["max_steps"] = pretrain_steps
        pre["trl"]["save_steps"] = max(1, pretrain_steps // 3)
    cfg["stages"] = [pre]
    return cfg


def arm_config(arm: str, seed: int, out_root: Path, budget: int = BUDGET) -> dict[str, Any]:
    """An arm of a seed: its stages, starting from the seed's pretrained model."""
    cfg = base_config()
    cfg["name"] = f"s{seed}-{arm}"
    cfg["seed"] = seed
    cfg["output_dir"] = str(out_root)
    start = out_root / f"s{seed}-pretrain" / "pretrain" / "model"
    cfg["model"] = {k: v for k, v in cfg["model"].items() if k != "nano"} | {"name_or_path": str(start)}
    cfg["stages"] = arm_stages(arm, budget)
    return cfg
