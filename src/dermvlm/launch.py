"""How the run is launched, as far as the model's placement cares: one process or DDP (every process holds the whole
model), DeepSpeed ZeRO-3 or FSDP (parameters sharded across processes). Read from accelerate's environment under
``accelerate launch`` or from its config file (``dermvlm config check --accelerate-config FILE``), so a combination
that cannot work is refused before any model loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Sharding = Literal["zero3", "fsdp"] | None


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def sharding_from_env(env: dict[str, str] | None = None) -> Sharding:
    """What ``accelerate launch`` set for this process (``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED`` with
    ``ACCELERATE_DEEPSPEED_ZERO_STAGE``)."""
    env = os.environ if env is None else env
    if _true(env.get("ACCELERATE_USE_FSDP")):
        return "fsdp"
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")) and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip() == "3":
        return "zero3"
    return None


def sharding_from_config(path: Path) -> Sharding:
    """What an accelerate config file (``configs/accelerate/*.yaml``) will launch."""
    from dermvlm import safe_yaml

    cfg = safe_yaml.load(safe_yaml.read_text(path)) or {}
    kind = str(cfg.get("distributed_type", "")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED" and int((cfg.get("deepspeed_config") or {}).get("zero_stage", 0)) == 3:
        return "zero3"
    return None


def launch_problems(cfg, sharding: Sharding, source: str = "<config>") -> list[str]:
    """One line per thing in ``cfg`` that cannot work under ``sharding``, naming the field and what to do."""
    if sharding is None:
        return []
    name = {"zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP"}[sharding]
    problems = []
    for i, stage in enumerate(cfg.stages):
        if stage.kind == "vision":
            problems.append(f"{source}: stages[{i}] ({stage.name}): the vision stage trains the tower beside an "
                            f"unwrapped language model and cannot run under {name}; run it with one process or "
                            f"DDP (accelerate launch --multi_gpu), then the other stages with {name} (dermvlm train)")
    return problems
