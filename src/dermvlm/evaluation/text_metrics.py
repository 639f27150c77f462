"""Text metrics for open-ended answers: exact match and token F1 (SQuAD normalisation: lower case, no punctuation or
articles), ROUGE-L F (``rouge-score``, Porter stemming) and corpus BLEU (``sacrebleu``), with a seeded bootstrap
interval of the mean for exact match, token F1 and ROUGE-L."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _mean_ci(values: list[float], n: int, seed: int) -> list[float] | None:
    import numpy as np

    if n <= 0 or len(values) < 2:
        return None
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def text_scores(predictions: list[str], references: list[str], bootstrap: int = 1000, seed: int = 0
                ) -> dict[str, Any]:
    """Means (and intervals) of exact match, token F1 and ROUGE-L; corpus BLEU. ``_exact`` holds the per-item
    exact matches for strata (the caller removes it)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    exact = [float(normalise_answer(p) == normalise_answer(r)) for p, r in zip(predictions, references, strict=True)]
    f1 = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score if predictions else 0.0
    mean = {"exact_match": exact, "token_f1": f1, "rouge_l": rouge}
    out: dict[str, Any] = {k: round(sum(v) / max(1, len(v)), 4) for k, v in mean.items()}
    out["bleu"] = round(bleu, 2)
    out["accuracy"] = out["exact_match"]  # the headline figure of an open-ended type
    out["ci95"] = {k: _mean_ci(v, bootstrap, seed + i) for i, (k, v) in enumerate(mean.items())}
    out["_exact"] = exact
    return out
