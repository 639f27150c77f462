"""Evaluation metrics against scikit-learn and hand-computed cases; answer parsing (strict, lenient, unparsable,
multiple answers)."""

from __future__ import annotations

import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from dermvlm.evaluation import metrics as M
from dermvlm.evaluation.parsing import parse
from dermvlm.evaluation.score import score_predictions
from dermvlm.knowledge import load_graph

Y_TRUE = ["mel", "mel", "nv", "nv", "nv", "bcc", "bcc", "df"]
Y_PRED = ["mel", "nv", "nv", "nv", "mel", "bcc", M.UNPARSABLE, "df"]


def test_metrics_match_scikit_learn_and_hand_counts():
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(accuracy_score(Y_TRUE, Y_PRED)) == pytest.approx(5 / 8)
    # recall per class: mel 1/2, nv 2/3, bcc 1/2, df 1 → mean 2/3
    assert M.balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((0.5 + 2 / 3 + 0.5 + 1) / 4)
    assert M.balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx(
        recall_score(Y_TRUE, Y_PRED, labels=sorted(set(Y_TRUE)), average="macro", zero_division=0))
    assert M.macro_f1(Y_TRUE, Y_PRED) == pytest.approx(
        f1_score(Y_TRUE, Y_PRED, labels=["bcc", "df", "mel", "nv"], average="macro", zero_division=0))
    per = M.per_class(Y_TRUE, Y_PRED)
    assert per["nv"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3),
                         "support": 3}
    conf = M.confusion(Y_TRUE, Y_PRED)
    assert conf["columns"][-1] == "(other)" and conf["matrix"][0] == [1, 0, 0, 0, 1]  # bcc: 1 right, 1 unparsable
    ss = M.sensitivity_specificity([True, True, False, False, False], [True, False, True, False, False])
    assert ss == {"sensitivity": 0.5, "specificity": pytest.approx(2 / 3), "tp": 1, "fn": 1, "tn": 2, "fp": 1}
    assert M.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and M.percentile([], 50) is None
    assert M.strata(["I-II", "I-II", "", "V-VI"], [True, False, True, True]) == {
        "I-II": {"n": 2, "accuracy": 0.5}, "V-VI": {"n": 1, "accuracy": 1.0}}


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    a = M.bootstrap_ci(M.accuracy, Y_TRUE, Y_PRED, n=500, seed=3)
    assert a == M.bootstrap_ci(M.accuracy, Y_TRUE, Y_PRED, n=500, seed=3)
    assert a[0] <= M.accuracy(Y_TRUE, Y_PRED) <= a[1] and a[0] < a[1]
    assert M.bootstrap_ci(M.accuracy, ["a"], ["a"], n=100) is None


@pytest.fixture(scope="module")
def kg():
    return load_graph()


MCQ = {"type": "mcq", "options": ["melanocytic nevus", "melanoma", "psoriasis", "tinea corporis"], "answer": "B",
       "label": "melanoma", "label_name": "melanoma"}
OPEN = {"type": "open", "options": [], "answer": "melanoma", "label": "melanoma", "label_name": "melanoma"}


@pytest.mark.parametrize(("text", "prediction", "mode"), [
    ("<think>dark</think><answer>B</answer>", "B", "strict"),
    ("<think>dark</think><answer>B. melanoma</answer>", "B", "strict"),
    ("<answer>(C)</answer>", "C", "strict"),
    ("The answer is D because of the ring.", "D", "lenient"),
    ("<answer>melanoma</answer>", "B", "lenient"),  # the option's name, not its letter
    ("I think it is psoriasis.", "C", "lenient"),
    ("<answer>B</answer> ... <answer>C</answer>", None, "unparsable"),  # multiple answers
    ("<answer>B or C</answer>", None, "unparsable"),
    ("no idea", None, "unparsable"),
    ("", None, "unparsable"),
])
def test_mcq_parsing(kg, text, prediction, mode):
    p = parse(text, MCQ, kg)
    assert (p.prediction, p.mode) == (prediction, mode)


@pytest.mark.parametrize(("text", "prediction", "mode", "reason"), [
    ("<think>a</think><answer>melanoma</answer>", "melanoma", "strict", ""),
    ("<answer>Malignant melanoma</answer>", "melanoma", "strict", ""),  # a graph synonym
    ("<answer>BCC</answer>", "basal_cell_carcinoma", "strict", ""),  # an abbreviation
    ("<answer>melanoma in situ</answer>", "melanoma_in_situ", "strict", ""),
    ("Not melanoma; most likely a seborrheic keratosis.", "seborrheic_keratosis", "lenient", ""),
    ("<answer>melanoma or psoriasis</answer>", None, "unparsable", "multiple answers"),
    ("<answer>a glorbic dermopathy</answer>", None, "unparsable", "no diagnosis the graph knows"),
    ("<answer>This image is not of skin.</answer>", "abstain", "strict", ""),
])
def test_open_parsing(kg, text, prediction, mode, reason):
    p = parse(text, OPEN, kg)
    assert (p.prediction, p.mode) == (prediction, mode)
    assert p.reason == reason


def test_yes_no_and_abstention_parsing(kg):
    yn = {"type": "yes_no", "options": ["yes", "no"], "answer": "yes", "label": "melanoma"}
    assert parse("<answer>Yes</answer>", yn, kg).prediction == "yes"
    assert parse("No, it looks benign.", yn, kg).mode == "lenient"
    assert parse("<answer>maybe</answer>", yn, kg).mode == "unparsable"
    ab = {"type": "abstention", "options": [], "answer": "abstain", "label": "not_skin"}
    assert parse("This is not an image of skin.", ab, kg).prediction == "abstain"
    assert parse("<answer>psoriasis</answer>", ab, kg).prediction == "psoriasis"


def test_score_predictions_hand_computed(kg):
    rows = [
        {**OPEN, "id": "1", "response": "<think>dark brown, irregular border; dysplastic nevus considered; see a "
                                       "dermatologist</think><answer>melanoma</answer>", "fitzpatrick_group": "I-II",
         "site": "back", "latency_s": 0.2, "completion_tokens": 20},
        {**OPEN, "id": "2", "response": "<think>melanoma and seborrheic keratosis considered</think>"
                                       "<answer>dysplastic nevus</answer>", "fitzpatrick_group": "V-VI", "site": "",
         "latency_s": 0.4, "completion_tokens": 20},
        {**OPEN, "id": "3", "label": "psoriasis", "label_name": "psoriasis", "response": "hmm", "fitzpatrick_group": "",
         "site": "", "latency_s": 0.3, "completion_tokens": 5},
    ]
    m = score_predictions(rows, kg, bootstrap=50)
    t = m["types"]["open"]
    assert t["accuracy"] == pytest.approx(1 / 3, abs=1e-3) and t["unparsable_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert t["top3_from_differential"] == pytest.approx(2 / 3, abs=1e-3)  # item 2 named melanoma in its differential
    assert t["strata"]["fitzpatrick"] == {"I-II": {"n": 1, "accuracy": 1.0}, "V-VI": {"n": 1, "accuracy": 0.0}}
    assert t["hierarchical_accuracy"]["level_1"] == pytest.approx(2 / 3, abs=1e-3)  # neoplasm answers; "hmm" misses
    # dysplastic nevus is premalignant in the graph: both answers flag the melanoma for referral
    assert (t["malignancy"]["tp"], t["malignancy"]["fn"], t["malignancy"]["tn"]) == (2, 0, 1)
    assert m["format_compliance"] == pytest.approx(2 / 3, abs=1e-3) and m["latency"]["p50_s"] == 0.3
    assert t["kg_factuality"]["referral_when_malignancy_in_play"] == 0.5


def test_vectorised_bootstrap_scores_equal_the_scalar_metrics_on_the_same_resamples():
    import numpy as np

    rng = np.random.default_rng(0)
    y_true = rng.choice(["a", "b", "c", "d"], size=120).tolist()
    y_pred = [t if rng.random() < 0.5 else str(rng.choice(["a", "b", "x", M.UNPARSABLE])) for t in y_true]
    draws = rng.integers(0, len(y_true), size=(40, len(y_true)))
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    for metric in (M.accuracy, M.balanced_accuracy, M.macro_f1):
        scalar = [metric(list(t[d]), list(p[d])) for d in draws]
        assert np.allclose(M._resampled_scores(metric, t, p, draws), scalar, atol=1e-12), metric.__name__
