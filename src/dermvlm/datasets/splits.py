"""The leakage check: no patient/lesion group and no near-duplicate pair crosses splits (splits themselves:
``split_assignment``)."""

from __future__ import annotations

from collections import defaultdict

from dermvlm.datasets.adapters.common import SPLITS, DatasetError
from dermvlm.datasets.records import Record


class LeakageError(DatasetError):
    """A patient/lesion group or a near-duplicate image sits in more than one split."""


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
                           + ". Fix the groups, or set dedup.policy: drop_train to drop the training copies (a run "
                           "config: data.dedup.policy).")


def split_counts(records: list[Record]) -> dict[str, int]:
    return {s: sum(r.split == s for r in records) for s in SPLITS}
