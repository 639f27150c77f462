"""Metrics as small pure functions (scikit-learn where it has them), with seeded bootstrap confidence intervals."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

UNPARSABLE = "(unparsable)"


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred)) if y_true else 0.0


def balanced_accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Mean recall over the classes present in ``y_true`` (predictions outside them count as misses)."""
    from sklearn.metrics import recall_score

    if not y_true:
        return 0.0
    labels = sorted(set(y_true))
    return float(recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    if not y_true:
        return 0.0
    return float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0))


def per_class(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import precision_recall_fscore_support

    labels = sorted(set(y_true))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)}


def confusion(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix over the gold labels, with one extra column for anything else (other or unparsable)."""
    from sklearn.metrics import confusion_matrix

    labels = sorted(set(y_true))
    other = "(other)"
    mapped = [p if p in labels else other for p in y_pred]
    cols = [*labels, other]
    matrix = confusion_matrix(list(y_true), mapped, labels=cols)[: len(labels)]
    return {"labels": labels, "columns": cols, "matrix": matrix.tolist()}


def sensitivity_specificity(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float | None]:
    """For a binary property (e.g. malignant): sensitivity, specificity and their counts."""
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and not p for t, p in zip(truth, predicted, strict=True))
    tn = sum((not t) and (not p) for t, p in zip(truth, predicted, strict=True))
    fp = sum((not t) and p for t, p in zip(truth, predicted, strict=True))
    return {"sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(list(values), q))


def bootstrap_ci(metric: Callable[[list, list], float], y_true: Sequence, y_pred: Sequence, n: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric`` over items (seeded; None when there is nothing to resample)."""
    if n <= 0 or len(y_true) < 2:
        return None
    rng = random.Random(seed)
    idx = range(len(y_true))
    stats = []
    for _ in range(n):
        sample = [rng.choice(idx) for _ in idx]
        stats.append(metric([y_true[i] for i in sample], [y_pred[i] for i in sample]))
    stats.sort()
    lo = stats[int((alpha / 2) * (n - 1))]
    hi = stats[int((1 - alpha / 2) * (n - 1))]
    return (round(lo, 4), round(hi, 4))


def strata(groups: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, float]]:
    """Accuracy by stratum (e.g. Fitzpatrick group or body site); empty group names are left out."""
    by: dict[str, list[bool]] = defaultdict(list)
    for g, c in zip(groups, correct, strict=True):
        if g:
            by[g].append(c)
    return {g: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for g, v in sorted(by.items())}
