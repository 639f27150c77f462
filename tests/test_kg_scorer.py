"""The KG scorer: orderings on crafted responses, negation, hallucinated diseases, safety, bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.knowledge import KGScorer, load_graph
from dermvlm.knowledge.lexicon import Lexicon


@pytest.fixture(scope="module")
def scorer():
    return KGScorer(load_graph())


REFER = " Please see a dermatologist promptly; a biopsy is advised."
CORRECT = ("<think>A dark brown and black plaque with an irregular border and blue-whitish veil; it has been "
           "changing. The differential includes dysplastic nevus and seborrheic keratosis.</think>"
           "<answer>melanoma</answer>" + REFER)
CONTRADICTED = ("<think>A dark brown plaque with an irregular border, covered in small blisters and burrows. "
                "The differential includes dysplastic nevus and seborrheic keratosis.</think>"
                "<answer>melanoma</answer>" + REFER)
SIBLING = ("<think>A dark brown plaque with an irregular border. The differential includes melanoma and "
           "seborrheic keratosis.</think><answer>dysplastic nevus</answer>" + REFER)
UNRELATED = ("<think>A red plaque with silvery scale on the elbows. The differential includes seborrheic "
             "dermatitis and tinea corporis.</think><answer>psoriasis</answer>")


def test_orderings_on_crafted_responses(scorer):
    s = {name: scorer.score(text, "melanoma").score for name, text in [
        ("correct", CORRECT), ("contradicted", CONTRADICTED), ("sibling", SIBLING), ("unrelated", UNRELATED),
        ("empty", "")]}
    assert s["correct"] > s["contradicted"] > s["sibling"] > s["unrelated"] > s["empty"] == 0.0, s
    assert s["correct"] >= 0.9


def test_breakdown_of_a_correct_answer(scorer):
    b = scorer.score(CORRECT, "melanoma")
    assert b.has_answer_tag and b.answered == "melanoma" and b.diagnosis_relation == "exact"
    # no record confirms them: melanoma's textbook features stated as findings are stereotypes, not support
    assert {"colour:dark_brown", "border:irregular_border", "dermoscopic:blue_whitish_veil"} <= set(b.consistent)
    assert b.supported == [] and b.contradicted == []
    legacy = KGScorer(scorer.kg, grounded=False).score(CORRECT, "melanoma")
    assert {"colour:dark_brown", "border:irregular_border", "dermoscopic:blue_whitish_veil"} <= set(legacy.supported)
    assert set(b.differentials) == {"dysplastic_nevus", "seborrheic_keratosis"} == set(b.plausible_differentials)
    assert b.malignancy_in_play and b.referral_advised and b.safety_score == 1.0


def test_contradicted_features_are_listed(scorer):
    b = scorer.score(CONTRADICTED, "melanoma")
    assert {"morphology:vesicle", "morphology:burrow"} <= set(b.contradicted)
    assert b.feature_score == 0.0  # features melanoma lacks; CORRECT's features are neutral (no record decides)
    assert scorer.score(CORRECT, "melanoma").feature_score is None


def test_hierarchical_partial_credit(scorer):
    def credit(answer, gold):
        return scorer.score(f"<answer>{answer}</answer>", gold).diagnosis_credit

    assert credit("nodular basal cell carcinoma", "nodular_bcc") == 1.0
    assert credit("nodular basal cell carcinoma", "basal_cell_carcinoma") == 1.0  # a subtype of the gold
    assert credit("basal cell carcinoma", "nodular_bcc") == 0.8  # right disease, less specific
    assert credit("seborrheic keratosis", "benign_keratosis_like_lesion") == 1.0  # member of HAM's umbrella
    assert credit("superficial basal cell carcinoma", "nodular_bcc") == 0.5  # sibling
    assert credit("melanocytic nevus", "melanoma") == pytest.approx(0.2)  # same branch, other malignancy
    assert credit("squamous cell carcinoma", "melanoma") == 0.15  # both malignant, other branch
    assert credit("psoriasis", "melanoma") == 0.0


@pytest.mark.parametrize(("text", "claimed", "negated"), [
    ("There is no scale.", [], ["morphology:scale"]),
    ("No scale or crust is seen.", [], ["morphology:scale", "morphology:crust"]),
    ("Without ulceration; there is scale.", ["morphology:scale"], ["morphology:ulcer"]),
    ("Scale is absent, but crust is present.", ["morphology:crust"], ["morphology:scale"]),
    ("A scaly plaque, not itchy.", ["morphology:scale", "morphology:plaque"], ["symptom:itch"]),
    ("Vesicles are not seen. Plaques with scaling.", ["morphology:plaque", "morphology:scale"],
     ["morphology:vesicle"]),
])
def test_negation(text, claimed, negated):
    kg = load_graph()
    found = [m for m in kg.lexicon.find(text) if m.kind not in ("disease", "category")]
    assert sorted(m.node for m in found if not m.negated) == sorted(claimed)
    assert sorted(m.node for m in found if m.negated) == sorted(negated)


def test_negated_diseases_are_not_the_answer(scorer):
    b = scorer.score("This is not melanoma; it is most likely a seborrheic keratosis.", "seborrheic_keratosis")
    assert b.answered == "seborrheic_keratosis" and b.diagnosis_credit == 1.0
    b = scorer.score("Melanoma is unlikely. Consistent with a dermatofibroma.", "dermatofibroma")
    assert b.answered == "dermatofibroma"


def test_hallucinated_disease_breakdown(scorer):
    text = ("<think>Brown papules. The findings are consistent with glorbic keratoderma of Smythe.</think>"
            "<answer>Smythe-Hartwell dermopathy</answer>")
    b = scorer.score(text, "seborrheic_keratosis")
    assert b.answered is None and b.diagnosis_credit == 0.0
    assert "smythe-hartwell dermopathy" in [u.lower() for u in b.unknown_diseases]
    assert "glorbic keratoderma smythe" in b.unknown_diseases
    assert b.score == 0.0
    honest = scorer.score("<think>Brown papules.</think><answer>seborrheic keratosis</answer>", "seborrheic_keratosis")
    assert honest.unknown_diseases == [] and honest.score > 0.8


def test_safety_penalises_malignancy_without_referral(scorer):
    with_ref = scorer.score("<answer>basal cell carcinoma</answer> Refer to a dermatologist.", "basal_cell_carcinoma")
    without = scorer.score("<answer>basal cell carcinoma</answer>", "basal_cell_carcinoma")
    assert with_ref.safety_score == 1.0 and without.safety_score == 0.0 and with_ref.score > without.score
    benign = scorer.score("<answer>seborrheic keratosis</answer>", "seborrheic_keratosis")
    assert not benign.malignancy_in_play and benign.safety_score == 1.0


def test_metadata_site_and_fitzpatrick(scorer):
    text = ("<think>A pearly papule on the nose in Fitzpatrick type II skin.</think>"
            "<answer>basal cell carcinoma</answer>")
    on_nose = scorer.score(text, "basal_cell_carcinoma", site="face", fitzpatrick=2)
    assert "site:nose" in on_nose.supported and "fitzpatrick:2" in on_nose.supported
    on_leg = scorer.score(text, "basal_cell_carcinoma", site="leg", fitzpatrick=6)
    assert "site:nose" in on_leg.contradicted and "fitzpatrick:2" in on_leg.contradicted


@pytest.mark.parametrize("bad", ["", "   ", None, 42, b"bytes", ["a list"]])
def test_bad_input_scores_zero_with_a_reason(scorer, bad):
    b = scorer.score(bad, "melanoma")
    assert b.score == 0.0 and b.reason


def test_abstention_and_deterministic(scorer):
    b = scorer.score("<answer>This image is not of skin.</answer>", "melanoma")
    assert b.abstained and b.answered is None and b.unknown_diseases == []
    assert scorer.score(CORRECT, "melanoma") == KGScorer(load_graph()).score(CORRECT, "melanoma")


def test_lexicon_longest_match_and_spelling():
    lex = Lexicon()
    lex.add("melanoma", "melanoma", "disease")
    lex.add("melanoma in situ", "melanoma_in_situ", "disease")
    lex.add("skin-coloured", "colour:skin_coloured", "colour")
    found = lex.find("Melanoma in situ, skin colored.")
    assert [m.node for m in found] == ["melanoma_in_situ", "colour:skin_coloured"]


def test_cli_kg_commands(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["kg", "stats", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["diseases"]["count"] >= 200
    r = runner.invoke(app, ["kg", "show", "BCC", "--plot", str(tmp_path / "bcc.png")])
    assert r.exit_code == 0 and "basal cell carcinoma (basal_cell_carcinoma)" in r.output
    assert (tmp_path / "bcc.png").stat().st_size > 10_000
    r = runner.invoke(app, ["kg", "path", "melanoma", "nevus"])
    assert r.exit_code == 0 and "lowest common ancestor: melanocytic neoplasm" in r.output
    for fmt in ("graphml", "json"):
        r = runner.invoke(app, ["kg", "export", "--format", fmt, "--out", str(tmp_path / f"kg.{fmt}")])
        assert r.exit_code == 0 and (tmp_path / f"kg.{fmt}").stat().st_size > 100_000
    r = runner.invoke(app, ["kg", "score", "--gold", "melanoma", "--response", CORRECT, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["answered"] == "melanoma"
    r = runner.invoke(app, ["kg", "show", "melanomaa"])
    assert r.exit_code == 2 and "closest: melanoma" in r.output
