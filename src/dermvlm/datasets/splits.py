"""Splits: official where they exist, otherwise group-aware, label-stratified and seeded; and the leakage check."""

from __future__ import annotations

from collections import defaultdict

from dermvlm.datasets.adapters.common import SPLITS, DatasetError
from dermvlm.datasets.records import Record


class LeakageError(DatasetError):
    """A patient/lesion group or a near-duplicate image sits in more than one split."""


def assign_splits(records: list[Record], val: float = 0.1, test: float = 0.2, seed: int = 0) -> None:
    """Give every record without a split one, keeping groups whole and label proportions close (in place)."""
    todo = [r for r in records if not r.split]
    if not todo:
        return
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DatasetError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    def carve(items: list[Record], frac: float, name: str, seed_: int) -> list[Record]:
        """Move about ``frac`` of ``items`` (whole groups) to split ``name``; return the rest."""
        if frac <= 0 or len({r.group_id for r in items}) < 2:
            return items
        n_splits = max(2, round(1 / frac))
        labels = np.array([r.label for r in items])
        groups = np.array([r.group_id for r in items])
        # Classes rarer than n_splits cannot be stratified; sklearn warns and still keeps groups whole.
        kfold = StratifiedGroupKFold(n_splits=min(n_splits, len(set(groups))), shuffle=True, random_state=seed_)
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, held = next(kfold.split(np.zeros(len(items)), labels, groups))
            held_set = set(held.tolist())
        except ValueError:  # too few images per class to stratify: seeded whole-group sampling instead
            held_set = _group_sample(items, frac, seed_)
        for i in held_set:
            items[i].split = name
        return [r for i, r in enumerate(items) if i not in held_set]

    rest = carve(todo, test, "test", seed)
    rest = carve(rest, val / (1 - test) if test < 1 else 0, "val", seed + 1)
    for r in rest:
        r.split = "train"


def _group_sample(items: list[Record], frac: float, seed: int) -> set[int]:
    """Indices of whole groups, drawn in a seeded order until about ``frac`` of the images are taken."""
    import random

    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(items):
        by_group[r.group_id].append(i)
    order = sorted(by_group)
    random.Random(seed).shuffle(order)
    target, taken = max(1, round(frac * len(items))), set()
    for g in order:
        if len(taken) >= target:
            break
        taken.update(by_group[g])
    return taken


def check_leakage(records: list[Record], duplicate_pairs: list[tuple[int, int]] | None = None) -> None:
    """Fail loudly when a group, or a pair of (near-)duplicate images, crosses splits."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        splits_of[r.group_id].add(r.split)
    crossing = sorted(g for g, s in splits_of.items() if len(s) > 1)
    problems = []
    if crossing:
        problems.append(f"{len(crossing)} group(s) in more than one split, e.g. {', '.join(crossing[:5])}")
    bad = [(i, j) for i, j in duplicate_pairs or [] if records[i].split != records[j].split]
    if bad:
        eg = ", ".join(f"{records[i].image} ({records[i].split}) ~ {records[j].image} ({records[j].split})"
                       for i, j in bad[:3])
        problems.append(f"{len(bad)} duplicate image pair(s) across splits, e.g. {eg}")
    if problems:
        raise LeakageError("data leakage: " + "; ".join(problems)
                           + ". Fix the groups, or set dedup.policy to drop the training copies.")


def split_counts(records: list[Record]) -> dict[str, int]:
    return {s: sum(r.split == s for r in records) for s in SPLITS}
