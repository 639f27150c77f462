"""Grounded reasoning: traces say what the record shows here apart from what is typical of a diagnosis, and the
KG scorer, the reasoning reward and the evaluation's factuality stop paying for reciting the label's stereotype."""

from __future__ import annotations

import random

import pytest

from dermvlm.datasets.records import Record
from dermvlm.evaluation.score import score_predictions
from dermvlm.knowledge import KGScorer, load_graph
from dermvlm.knowledge.grounding import RecordFacts, sentence_role, sentence_roles
from dermvlm.recipes import text
from dermvlm.training import rewards as R

META = {"age": "55", "gender": "FEMALE", "symptoms": ["itch", "grew"],
        "symptoms_absent": ["hurt", "bleed", "changed", "elevation"]}
STEREOTYPE = ("<think>The lesion shows an irregular border, blue-whitish veil and an atypical pigment network."
              "</think><answer>melanoma</answer> See a dermatologist.")


@pytest.fixture(scope="module")
def kg():
    return load_graph()


@pytest.fixture(scope="module")
def record(kg):
    return Record(image="x.png", label="melanoma", source_label="MEL", dataset="pad_ufes_20", split="test",
                  group_id="p", fitzpatrick=2, site="back", meta=META)


def trace(kg, record, seed=0) -> str:
    return f"<think>{text.reasoning(kg, record, random.Random(seed))}</think><answer>melanoma</answer>"


@pytest.mark.parametrize(("sentence", "role"), [
    ("Typical of melanoma: irregular border and blue-whitish veil.", "typical"),
    ("Dysplastic nevus is considered, but it usually shows a regular network.", "typical"),
    ("Melanoma classically shows several colours.", "typical"),
    ("Please have it checked, sooner if it changes, bleeds or grows.", "advice"),
    ("Here: a dermoscopic image of a skin lesion on the back.", None),
    ("Reported here: itching and growth.", None),
    ("The lesion shows an irregular border.", None),
    ("The record reports no bleeding, typically a warning sign.", None),  # about the record: stays a finding
])
def test_sentences_are_told_apart(sentence, role):
    assert sentence_role(sentence) == role


def test_traces_state_the_record_here_and_mark_class_knowledge(kg, record):
    t = trace(kg, record)
    assert "Here: a clinical photograph of a skin lesion on the back in Fitzpatrick type II skin, in a " \
           "55-year-old woman." in t
    assert "Reported here: itching and growth." in t and "no pain, no bleeding, no change and no elevation" in t
    assert "Typical" in t or "typically" in t or "look for" in t
    b = KGScorer(kg).score(t, "melanoma", site="back", fitzpatrick=2, facts=RecordFacts.from_meta(META))
    # every record fact is supported (a denied symptom as "no bleeding"); no class feature poses as a finding
    assert {"site:back", "symptom:itch", "symptom:growth", "symptom:pain", "symptom:bleeding", "symptom:change",
            "morphology:elevated", "fitzpatrick:2"} <= set(b.supported)
    assert b.contradicted == [] and b.consistent == [] and b.typical_supported
    assert b.feature_score == 1.0 and b.knowledge_score is not None and b.knowledge_score > 0.5
    roles = sentence_roles(t)
    assert "typical" in roles.values() and 0 not in roles


def test_reciting_the_stereotype_no_longer_scores_as_factual(kg, record):
    facts = RecordFacts.from_meta(META)
    grounded, legacy = KGScorer(kg), KGScorer(kg, grounded=False)
    new = {name: grounded.score(r, "melanoma", site="back", fitzpatrick=2, facts=facts)
           for name, r in [("trace", trace(kg, record)), ("stereotype", STEREOTYPE)]}
    old = {name: legacy.score(r, "melanoma", site="back", fitzpatrick=2)
           for name, r in [("trace", trace(kg, record)), ("stereotype", STEREOTYPE)]}
    assert old["stereotype"].feature_score == 1.0  # before: the label's features counted as supported
    # after: the record decides none of them, so they are neutral (listed as stereotypes, no feature score)
    assert new["stereotype"].feature_score is None and len(new["stereotype"].consistent) == 3
    bare = grounded.score("<answer>melanoma</answer> See a dermatologist.", "melanoma", facts=facts)
    assert new["stereotype"].score == bare.score and new["trace"].feature_score == 1.0


def test_record_facts_decide_claims_both_ways(kg):
    facts = RecordFacts.from_json(RecordFacts.from_meta(META).to_json())
    s = KGScorer(kg)
    wrong = s.score("<think>Here: it bleeds; the patient reports no itching.</think><answer>melanoma</answer>",
                    "melanoma", facts=facts)
    assert set(wrong.contradicted) == {"symptom:bleeding", "symptom:itch"} and wrong.feature_score == 0.0
    right = s.score("<think>Here: it itches and has grown; no bleeding.</think><answer>melanoma</answer>",
                    "melanoma", facts=facts)
    assert set(right.supported) == {"symptom:itch", "symptom:growth", "symptom:bleeding"}
    assert RecordFacts.from_json("") is None and not RecordFacts.from_meta({})


def test_wrong_class_knowledge_costs_and_is_checked_against_its_disease(kg):
    s = KGScorer(kg)
    right = s.score("<think>Typical of melanoma: irregular border. Psoriasis usually shows silvery scale."
                    "</think><answer>melanoma</answer> See a dermatologist.", "melanoma")
    right_alone = s.score("<think>Typical of melanoma: irregular border.</think><answer>melanoma</answer> "
                          "See a dermatologist.", "melanoma")
    wrong = s.score("<think>Typical of melanoma: burrows and vesicles.</think><answer>melanoma</answer> "
                    "See a dermatologist.", "melanoma")
    assert set(right.typical_supported) >= {"border:irregular_border", "morphology:scale"}
    assert right.knowledge_score == 1.0 and wrong.typical_contradicted and right_alone.score > wrong.score
    assert right.supported == right.consistent == []  # class knowledge is not a finding about this image


def test_reasoning_reward_pays_grounding_not_recital(kg, record):
    facts = RecordFacts.from_meta(META).to_json()
    completions = [[{"role": "assistant", "content": trace(kg, record)}],
                   [{"role": "assistant", "content": STEREOTYPE}],
                   [{"role": "assistant", "content": trace(kg, record).replace("Reported here: itching",
                                                                               "The record reports no itching")}]]
    cols = {"label": ["melanoma"] * 3, "options": [[]] * 3, "answer": ["melanoma"] * 3,
            "question_type": ["open"] * 3, "site": ["back"] * 3, "fitzpatrick": [2] * 3,
            "record_facts": [facts] * 3}
    grounded, recital, wrong_fact = R.reasoning_consistency_reward(None, completions, **cols)
    assert grounded > wrong_fact and grounded > recital, (grounded, recital, wrong_fact)
    assert recital == 0.0  # no record fact, no differential: nothing grounded to pay
    kg_grounded, kg_recital, kg_wrong_fact = R.kg_score_reward(None, completions, **cols)
    assert kg_grounded >= kg_recital and kg_grounded > kg_wrong_fact


def test_factuality_reports_grounding(kg):
    base = {"question": "q", "options": [], "answer": "melanoma", "type": "open", "label": "melanoma",
            "label_name": "melanoma", "dataset": "pad_ufes_20", "split": "test", "group_id": "g", "fitzpatrick": 2,
            "fitzpatrick_group": "I-II", "site": "back", "malignancy": "malignant", "source_label": "MEL",
            "latency_s": 0.1, "completion_tokens": 10, "record_facts": RecordFacts.from_meta(META).to_json()}
    rows = [{**base, "id": "1", "response": "<think>Here: a lesion on the back; reported here: itching."
                                            "</think><answer>melanoma</answer> See a dermatologist."},
            {**base, "id": "2", "response": STEREOTYPE}]
    f = score_predictions(rows, kg, bootstrap=20)["types"]["open"]["kg_factuality"]
    assert f["record_supported_claims_per_answer"] == 1.0  # site and itch on item 1, nothing on item 2
    assert f["stereotype_claims_per_answer"] == 1.5 and f["knowledge_error_rate"] == 0.0


def test_cli_scores_against_record_facts():
    from typer.testing import CliRunner

    from dermvlm.cli import app

    response = "<think>Here: it bleeds and itches.</think><answer>melanoma</answer> See a dermatologist."
    out = CliRunner().invoke(app, ["kg", "score", "--gold", "melanoma", "--response", response,
                                   "--reported", "itch", "--denied", "bleed"])
    assert out.exit_code == 0, out.output
    assert "supported: ['symptom:itch']" in out.output and "contradicted: ['symptom:bleeding']" in out.output
    bad = CliRunner().invoke(app, ["kg", "score", "--gold", "melanoma", "--response", response, "--reported", "fever"])
    assert bad.exit_code != 0 and "'fever' is not one of itch" in bad.output
