"""Metrics as small pure functions (scikit-learn where it has them), with seeded bootstrap confidence intervals."""

from __future__ import annotations

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


def _resampled_scores(metric: Callable, t, p, draws) -> Any:
    """``metric`` on every resample (a row of ``draws``): vectorised for accuracy, balanced accuracy and macro-F1
    (the classes present in each resample's gold labels, as the scalar functions define them)."""
    import numpy as np

    if metric not in (accuracy, balanced_accuracy, macro_f1):
        return np.array([metric(list(t[d]), list(p[d])) for d in draws], dtype=float)
    codes = {c: k for k, c in enumerate(sorted(set(t.tolist()) | set(p.tolist())))}
    k = len(codes)
    tc = np.array([codes[v] for v in t.tolist()])[draws]  # (resamples, items)
    pc = np.array([codes[v] for v in p.tolist()])[draws]
    if metric is accuracy:
        return (tc == pc).mean(axis=1)
    rows = np.arange(len(draws))[:, None] * k

    def counts(codes_, mask=None):
        flat = (codes_ + rows)[mask] if mask is not None else (codes_ + rows).ravel()
        return np.bincount(flat.ravel(), minlength=len(draws) * k).reshape(len(draws), k)

    support, hits, predicted = counts(tc), counts(tc, tc == pc), counts(pc)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(support.shape), where=present)
    if metric is balanced_accuracy:
        return (recall * present).sum(axis=1) / present.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(support.shape), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(support.shape),
                   where=(precision + recall) > 0)
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def bootstrap_ci(metric: Callable[[list, list], float], y_true: Sequence, y_pred: Sequence, n: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric`` over items (seeded; None when there is nothing to resample).
    The resamples are drawn at once with numpy; accuracy, balanced accuracy and macro-F1 are scored on all of
    them together (``_resampled_scores``)."""
    import numpy as np

    if n <= 0 or len(y_true) < 2:
        return None
    draws = np.random.default_rng(seed).integers(0, len(y_true), size=(n, len(y_true)))
    stats = np.sort(_resampled_scores(metric, np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object),
                                      draws))
    lo = stats[int((alpha / 2) * (n - 1))]
    hi = stats[int((1 - alpha / 2) * (n - 1))]
    return (round(float(lo), 4), round(float(hi), 4))


def strata(groups: Sequence[str], correct: Sequence[bool]) -> dict[str, dict[str, float]]:
    """Accuracy by stratum (e.g. Fitzpatrick group or body site); empty group names are left out."""
    by: dict[str, list[bool]] = defaultdict(list)
    for g, c in zip(groups, correct, strict=True):
        if g:
            by[g].append(c)
    return {g: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for g, v in sorted(by.items())}


def _balanced_accuracy_codes(t, p, classes: int):
    """Balanced accuracy of integer-coded labels, over the classes present in ``t`` (numpy, for resampling)."""
    import numpy as np

    support = np.bincount(t, minlength=classes)
    hits = np.bincount(t[t == p], minlength=classes)
    present = support > 0
    return float((hits[present] / support[present]).mean()) if present.any() else 0.0


def fairness(groups: Sequence[str | Sequence[str]], y_true: Sequence[str], y_pred: Sequence[str],
             bootstrap: int = 1000, seed: int = 0, min_n: int = 10) -> dict[str, Any]:
    """Per-group accuracy, balanced accuracy (with seeded percentile-bootstrap intervals over the group's items),
    per-class recall and n, for one stratification (an item may belong to several groups, e.g. artefact tags;
    empty names are left out); the worst group and the largest gap by balanced accuracy among groups of at
    least ``min_n`` items (smaller groups are reported but never named worst)."""
    import numpy as np

    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        for name in ([g] if isinstance(g, str) else list(g)):
            if name:
                members[name].append(i)
    codes = {c: k for k, c in enumerate(sorted(set(y_true) | set(y_pred)))}
    t_all = np.array([codes[v] for v in y_true], dtype=int)
    p_all = np.array([codes[v] for v in y_pred], dtype=int)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"groups": {}, "min_n": min_n}
    for name, idx in sorted(members.items()):
        t, p = t_all[idx], p_all[idx]
        entry: dict[str, Any] = {"n": len(idx), "accuracy": round(float((t == p).mean()), 4),
                                 "balanced_accuracy": round(_balanced_accuracy_codes(t, p, len(codes)), 4)}
        if bootstrap > 0 and len(idx) >= 2:
            draws = rng.integers(0, len(idx), size=(bootstrap, len(idx)))
            acc = np.sort((t[draws] == p[draws]).mean(axis=1))
            bal = np.sort([_balanced_accuracy_codes(t[d], p[d], len(codes)) for d in draws])
            lo, hi = int(0.025 * (bootstrap - 1)), int(0.975 * (bootstrap - 1))
            entry["ci95"] = {"accuracy": (round(float(acc[lo]), 4), round(float(acc[hi]), 4)),
                             "balanced_accuracy": (round(float(bal[lo]), 4), round(float(bal[hi]), 4))}
        gold = [y_true[i] for i in idx]
        entry["recall"] = {c: round(sum(y_pred[i] == c for i in idx if y_true[i] == c) / gold.count(c), 4)
                           for c in sorted(set(gold))}
        out["groups"][name] = entry
    eligible = {g: v for g, v in out["groups"].items() if v["n"] >= min_n}
    if eligible:
        worst = min(eligible, key=lambda g: (eligible[g]["balanced_accuracy"], g))
        best = max(eligible, key=lambda g: (eligible[g]["balanced_accuracy"], g))
        out["worst_group"] = {"group": worst, **{k: eligible[worst][k] for k in ("n", "balanced_accuracy")}}
        if len(eligible) >= 2:
            out["largest_gap"] = {"between": [best, worst], "balanced_accuracy": round(
                eligible[best]["balanced_accuracy"] - eligible[worst]["balanced_accuracy"], 4)}
    return out


def encode(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str] | None = None):
    """Integer labels for fast metrics: gold classes (sorted, or ``classes``) 0..k-1; a prediction outside them -1."""
    import numpy as np

    classes = list(classes) if classes is not None else sorted(set(y_true))
    index = {c: i for i, c in enumerate(classes)}
    return (np.array([index[c] for c in y_true], dtype=int), np.array([index.get(c, -1) for c in y_pred], dtype=int),
            len(classes))


def integer_metric(metric: str, t, p, k: int) -> float:
    """``accuracy``, ``balanced_accuracy`` or ``macro_f1`` on encoded labels: the definitions above, vectorised
    (macro means over the classes present in ``t``)."""
    import numpy as np

    if metric == "accuracy":
        return float((t == p).mean())
    tp = np.bincount(t[t == p], minlength=k).astype(float)
    support = np.bincount(t, minlength=k).astype(float)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(k), where=present)
    if metric == "balanced_accuracy":
        return float(recall[present].mean())
    predicted = np.bincount(p[p >= 0], minlength=k).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return float(f1[present].mean())


def fast_bootstrap(metric: str, y_true: Sequence[str], y_pred: Sequence[str], n: int = 1000, seed: int = 0
                   ) -> tuple[float, float] | None:
    """Percentile bootstrap interval (items resampled, numpy-seeded) of a metric ``integer_metric`` knows."""
    import numpy as np

    if n <= 0 or len(y_true) < 2:
        return None
    t, p, k = encode(y_true, y_pred)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        i = rng.integers(0, len(t), len(t))
        draws.append(integer_metric(metric, t[i], p[i], k))
    return (round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4))
