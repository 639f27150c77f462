"""The ``--max-lora-rank`` a set of PEFT adapters needs: their largest rank, rounded up to a value vLLM accepts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

# vLLM 0.32's choices for --max-lora-rank (LoRAConfig.max_lora_rank).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LoraRankError(ValueError):
    """An adapter config is unreadable, or no accepted ``--max-lora-rank`` fits it."""


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest rank in ``adapter_config.json``: ``r`` and every value of ``rank_pattern``."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
        ranks = [int(cfg["r"]), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LoraRankError(f"{path}: no readable LoRA rank 'r' ({type(err).__name__}: {err})") from None
    return max(ranks)


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for choice in VLLM_LORA_RANKS:
        if choice >= rank:
            return choice
    raise LoraRankError(f"LoRA rank {rank} is larger than vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")


def max_lora_rank(adapter_dirs: Iterable[str | Path], requested: int | None = None) -> int:
    """``requested`` if it is a vLLM choice and holds every adapter, else the smallest choice that does."""
    needed = max((adapter_rank(d) for d in adapter_dirs), default=1)
    if requested is None:
        return vllm_rank(needed)
    if requested not in VLLM_LORA_RANKS:
        raise LoraRankError(f"--max-lora-rank {requested}: vLLM accepts {', '.join(map(str, VLLM_LORA_RANKS))}")
    if requested < needed:
        raise LoraRankError(f"--max-lora-rank {requested} is smaller than the adapters' largest rank {needed}")
    return requested
