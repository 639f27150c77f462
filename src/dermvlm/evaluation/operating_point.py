"""Operating points of a closed-set classifier read from class scores (``class_scores.py``), and the metrics of
each decode.

The class scores ``s_c = log P(answer c | image, question)`` rank the classes; the generated answer is one decode
of the model, the class-score argmax another, and the **prior-corrected** decode ``argmax_c s_c − τ·log π_c``
(post-hoc logit adjustment, Menon et al. 2021) moves the operating point: τ > 0 trades majority-class recall for
minority recall. τ is fitted on a validation split (a grid, the best balanced accuracy, or accuracy; ties go to
the smallest |τ|) together with the prior ``π`` (that split's class frequencies), saved as ``operating_point.json``
and applied unchanged to other splits: never fitted on test.

``rank`` and ``statement`` are what a page showing one answer needs: the classes in corrected order with their
probabilities, and one sentence saying which operating point it uses; ``AS_GENERATED`` is that sentence when no
fitted operating point is used (the chat page's default: it reads the diagnosis from the generated answer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.io import atomic_write_text

FILE = "operating_point.json"
TAU_GRID = [round(-1.0 + 0.05 * i, 2) for i in range(81)]  # -1 .. 3
OBJECTIVES = ("balanced_accuracy", "accuracy")
AS_GENERATED = "**as generated** (the diagnosis the model's own answer names; no prior correction of class scores)"


@dataclass
class OperatingPoint:
    """τ per objective, the prior it multiplies, and where both were fitted."""

    classes: list[str]
    prior: dict[str, float]
    tau: dict[str, float]  # objective → τ
    fitted_on: dict[str, Any] = field(default_factory=dict)  # suite, split, n, model
    default: str = "balanced_accuracy"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, out_dir: Path) -> Path:
        return atomic_write_text(Path(out_dir) / FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> OperatingPoint:
        path = Path(path)
        data = json.loads((path / FILE if path.is_dir() else path).read_text())
        return cls(**data)

    def statement(self, objective: str | None = None) -> str:
        """One sentence: which operating point a ranking or decode uses."""
        objective = objective or self.default
        where = self.fitted_on
        return (f"prior-corrected class scores (score − τ·log prior, τ {self.tau[objective]:+.2f}, chosen for "
                f"{objective.replace('_', ' ')} on {where.get('suite', '?')} ({where.get('split', '?')} split, "
                f"{where.get('n', '?')} items)); the generated answer is the model's own, uncorrected")


def _matrix(scores: list[dict[str, float]], classes: list[str]):
    import numpy as np

    return np.array([[s[c] for c in classes] for s in scores], dtype=float)


def log_prior(prior: dict[str, float], classes: list[str]):
    import numpy as np

    return np.log(np.array([max(prior.get(c, 0.0), 1e-6) for c in classes]))


def probabilities(matrix, lp=None, tau: float = 0.0):
    """Softmax over the classes of ``score − τ·log prior`` (rows: items)."""
    import numpy as np

    z = matrix - (tau * lp if lp is not None else 0.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decode(matrix, classes: list[str], lp=None, tau: float = 0.0) -> list[str]:
    z = matrix - (tau * lp if lp is not None else 0.0)
    return [classes[i] for i in z.argmax(axis=1)]


def macro_auc(gold: list[str], probs, classes: list[str]) -> tuple[float | None, dict[str, float]]:
    """Macro one-vs-rest ROC AUC over the classes present in ``gold`` with at least one negative (as MedMNIST)."""
    from sklearn.metrics import roc_auc_score

    per = {}
    for j, c in enumerate(classes):
        y = [g == c for g in gold]
        if any(y) and not all(y):
            per[c] = float(roc_auc_score(y, probs[:, j]))
    return (sum(per.values()) / len(per) if per else None), per


def fit(scores: list[dict[str, float]], gold: list[str], classes: list[str], fitted_on: dict[str, Any] | None = None
        ) -> OperatingPoint:
    """τ for each objective on this split (its class frequencies as the prior)."""
    from dermvlm.evaluation import metrics as M

    prior = {c: gold.count(c) / len(gold) for c in classes}
    m, lp = _matrix(scores, classes), log_prior(prior, classes)

    def value(tau_: float, objective: str) -> float:
        t, p, k = M.encode(gold, decode(m, classes, lp, tau_))  # over the classes present in gold, as M defines
        return round(M.integer_metric(objective, t, p, k), 6)

    tau = {objective: max(TAU_GRID, key=lambda t_, o=objective: (value(t_, o), -abs(t_))) for objective in OBJECTIVES}
    return OperatingPoint(classes=list(classes), prior={c: round(p, 6) for c, p in prior.items()}, tau=tau,
                          fitted_on={**(fitted_on or {}), "n": len(gold)})


def rank(class_logprobs: dict[str, float], op: OperatingPoint | None = None, objective: str | None = None
         ) -> list[tuple[str, float]]:
    """The classes by probability at the operating point (``op`` None: the raw class scores), highest first."""
    classes = sorted(class_logprobs)
    m = _matrix([class_logprobs], classes)
    if op is None:
        p = probabilities(m)[0]
    else:
        p = probabilities(m, log_prior(op.prior, classes), op.tau[objective or op.default])[0]
    return sorted(zip(classes, (float(x) for x in p), strict=True), key=lambda kv: -kv[1])


def _scores(gold: list[str], pred: list[str], bootstrap: int, seed: int) -> dict[str, Any]:
    from dermvlm.evaluation import metrics as M

    out: dict[str, Any] = {m: round(getattr(M, m)(gold, pred), 4) for m in ("accuracy", "balanced_accuracy",
                                                                          "macro_f1")}
    out["ci95"] = {m: M.fast_bootstrap(m, gold, pred, bootstrap, seed + i)
                   for i, m in enumerate(("accuracy", "balanced_accuracy", "macro_f1"))}
    return out


def auc_ci(gold: list[str], probs, classes: list[str], n: int, seed: int) -> list[float] | None:
    """Percentile bootstrap (items resampled) of the macro AUC."""
    import numpy as np

    if n <= 0 or len(gold) < 2:
        return None
    rng = np.random.default_rng(seed)
    g = np.array(gold)
    draws = []
    for _ in range(n):
        i = rng.integers(0, len(g), len(g))
        value, _ = macro_auc(list(g[i]), probs[i], classes)
        if value is not None:
            draws.append(value)
    if not draws:
        return None
    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]


def closed_set_metrics(gold: list[str], generated: list[str], scores: list[dict[str, float]], classes: list[str],
                       op: OperatingPoint | None, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC (macro one-vs-rest, on the class-score probabilities) and accuracy / balanced accuracy / macro-F1 of
    each decode: as generated, the class-score argmax, and prior-corrected at each objective's τ of ``op``."""
    m = _matrix(scores, classes)
    auc, per_class = macro_auc(gold, probabilities(m), classes)
    out: dict[str, Any] = {
        "classes": list(classes), "n": len(gold),
        "auc": round(auc, 4) if auc is not None else None,
        "auc_ci95": auc_ci(gold, probabilities(m), classes, min(bootstrap, 300), seed + 7),
        "per_class_auc": {c: round(v, 4) for c, v in per_class.items()},
        "decodes": {"as_generated": _scores(gold, generated, bootstrap, seed),
                    "class_score_argmax": _scores(gold, decode(m, classes), bootstrap, seed)},
        "operating_point": op.to_dict() if op is not None else None,
    }
    if op is not None:
        lp = log_prior(op.prior, classes)
        for objective, tau in op.tau.items():
            entry = _scores(gold, decode(m, classes, lp, tau), bootstrap, seed)
            out["decodes"][f"prior_corrected_{objective}"] = entry | {"tau": tau}
    return out

