"""Which parts of a VLM train: freeze or unfreeze the vision tower, projector or language model by family."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from dermvlm.models.families import Family, family_for


def part_counts(model, family: Family | None = None, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per part (``vision``, ``projector``, ``language``, ``other``)."""
    family = family or family_for(model)
    counts: Counter = Counter()
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        counts[family.part_of(name) or "other"] += p.numel()
    return dict(counts)


def freeze(model, parts: Iterable[str], family: Family | None = None) -> int:
    """Stop gradients to every parameter of ``parts``; returns how many parameters were frozen."""
    family = family or family_for(model)
    parts = set(parts)
    n = 0
    for name, p in model.named_parameters():
        if family.part_of(name) in parts and p.requires_grad:
            p.requires_grad_(False)
            n += p.numel()
    return n


def train_only(model, parts: Iterable[str], family: Family | None = None) -> int:
    """Train exactly ``parts`` (everything else frozen); returns the trainable parameter count."""
    family = family or family_for(model)
    parts = set(parts)
    n = 0
    for name, p in model.named_parameters():
        keep = family.part_of(name) in parts
        p.requires_grad_(keep)
        n += p.numel() if keep else 0
    return n
