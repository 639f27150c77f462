"""One image, one label: the same image listed twice, or under two labels, is found and handled by a policy.

An image is "the same" when its path is (the same file listed twice in a CSV) or, once the images are read, when
its bytes are (the same photo under two names). A repeat with the same label keeps the first listing; a repeat with
different labels is a conflict: ``error`` (the default) stops the build naming both, ``drop`` leaves every copy
out, ``first`` keeps the first listing. Everything left out is returned for ``skipped.csv``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.records import Record


def resolve_conflicts(records: Sequence[Record], key: Callable[[int, Record], Any], policy: str = "error",
                      what: str = "image") -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the records to keep (in order) and the skipped ``(file, reason)`` pairs."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[key(i, r)].append(i)
    drop: set[int] = set()
    skipped: list[tuple[str, str]] = []
    conflicts = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        first = records[idx[0]]
        labels = sorted({records[i].source_label for i in idx})
        if len(labels) == 1:
            for i in idx[1:]:
                drop.add(i)
                skipped.append((records[i].image, f"duplicate {what} (same as {first.image}, same label)"))
            continue
        conflicts.append((first, idx, labels))
        if policy == "drop":
            for i in idx:
                drop.add(i)
                skipped.append((records[i].image, f"conflicting labels for one {what}: {', '.join(labels)}"))
        elif policy == "first":
            for i in idx[1:]:
                drop.add(i)
                skipped.append((records[i].image, f"conflicting labels for one {what}: kept {first.source_label!r} "
                                                  f"of {first.image}"))
    if conflicts and policy == "error":
        lines = [f"  {first.image}: labels {', '.join(repr(x) for x in labels)} ({_listings(records, idx)})"
                 for first, idx, labels in conflicts[:10]]
        more = f"\n  ... and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        raise DatasetError(f"{len(conflicts)} {what}(s) appear under two labels (contradictory gold labels):\n"
                           + "\n".join(lines) + more + "\nFix the labels, or set dedup.on_conflict (a run config: "
                           "data.dedup.on_conflict): drop (leave them out) or first (keep the first listing)")
    return [i for i in range(len(records)) if i not in drop], skipped


def _listings(records: Sequence[Record], idx: list[int]) -> str:
    """How an image came to have several labels: one file listed several times, or several files of one content."""
    files: dict[Path, str] = {}  # each file once (however its listings spell it), as first listed
    for i in idx:
        files.setdefault(Path(records[i].image).resolve(), records[i].image)
    if len(files) == 1:
        return f"listed {len(idx)} times"
    names = list(files.values())
    return f"{len(names)} files: {', '.join(names[:3])}" + (" ..." if len(names) > 3 else "")
