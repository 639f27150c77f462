"""Small data said plainly: a split or a class too small for its numbers to mean much, with the counts."""

from __future__ import annotations

from collections import Counter

from dermvlm.datasets.adapters.common import SPLITS
from dermvlm.datasets.records import Record

MIN_SPLIT = 10  # images in a split below which one image moves its accuracy by more than 10 points
MIN_CLASS = 5  # training images of a class below which the model sees it too rarely to learn it


def small_data_warnings(records: list[Record], val: float = 0.1, test: float = 0.2) -> list[str]:
    """One line per problem: a single class to train on, a split with fewer than ``MIN_SPLIT`` images (a held-out
    split whose fraction is above 0 and that is empty included), classes with fewer than ``MIN_CLASS`` training
    images, classes absent from a held-out split."""
    held_out = tuple(s for s, f in (("val", val), ("test", test)) if f > 0)
    by_split = Counter(r.split for r in records)
    per_class: dict[str, Counter] = {}
    for r in records:
        per_class.setdefault(r.label, Counter())[r.split] += 1
    lines = []
    trained = sorted(lab for lab, c in per_class.items() if c["train"])
    if len(trained) == 1:
        lines.append(f"one class: every training image is {trained[0]}; the model can only learn to say it (and "
                     "its accuracy on that class means nothing): add images of the diagnoses it should tell apart")
    for split in SPLITS:
        n = by_split.get(split, 0)
        if split in held_out and n == 0:
            lines.append(f"small data: the {split} split is empty ({len(records)} images in all); nothing is held "
                         f"out for {'evaluation' if split == 'test' else 'validation'}")
        elif 0 < n < MIN_SPLIT:
            lines.append(f"small data: the {split} split has {n} image{'' if n == 1 else 's'} (fewer than "
                         f"{MIN_SPLIT}): one image moves its accuracy by {100 / n:.0f} points")
    rare = sorted(lab for lab, c in per_class.items() if c["train"] < MIN_CLASS)
    if rare:
        lines.append(f"small data: {len(rare)} of {len(per_class)} classes have fewer than {MIN_CLASS} training "
                     "images each: " + "; ".join(f"{lab} ({_counts(per_class[lab])})" for lab in rare[:8])
                     + ("; ..." if len(rare) > 8 else ""))
    for split in held_out:
        if by_split.get(split):
            missing = sorted(lab for lab, c in per_class.items() if not c[split])
            if missing:
                lines.append(f"small data: {len(missing)} of {len(per_class)} classes have no {split} image: "
                             + ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else ""))
    return lines


def _counts(c: Counter) -> str:
    return ", ".join(f"{s} {c[s]}" for s in SPLITS)
