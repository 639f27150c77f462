"""The knowledge graph: invariants, coverage of every dataset's labels, label resolution, queries, curated errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import networkx as nx
import pytest

from dermvlm.knowledge import UnknownLabelError, load_graph
from dermvlm.knowledge.coverage import coverage_report
from dermvlm.knowledge.curated import DATA, CuratedError, load_curated
from dermvlm.knowledge.graph import ROOT, build_graph


@pytest.fixture(scope="module")
def kg():
    return load_graph()


def test_is_a_is_a_tree_reaching_the_root(kg):
    is_a = nx.DiGraph([(a, b) for a, b, r in kg.g.edges(data="rel") if r == "is_a"])
    assert nx.is_directed_acyclic_graph(is_a)
    for node, kind in kg.g.nodes(data="kind"):
        if kind in ("disease", "category") and node != ROOT:
            assert kg.category_path(node)[0] == ROOT, node
            assert sum(1 for _, _, r in kg.g.out_edges(node, data="rel") if r == "is_a") == 1, node


def test_differentials_are_symmetric_with_equal_weights(kg):
    diff = {(a, b): d["weight"] for a, b, d in kg.g.edges(data=True) if d["rel"] == "differential_of"}
    assert diff
    for (a, b), w in diff.items():
        assert diff.get((b, a)) == w, (a, b)
        assert kg.kind(a) == kg.kind(b) == "disease"


def test_no_orphan_feature_nodes(kg):
    for node, kind in kg.g.nodes(data="kind"):
        if kind not in ("disease", "category"):
            used = [r for _, _, r in kg.g.in_edges(node, data="rel")]
            assert used, f"feature node {node} is used by no disease"


def test_every_phrase_is_unique_or_explicitly_ambiguous(kg):
    allowed = set(json.loads((DATA / "ambiguous.json").read_text())["phrases"])
    ambiguous = set(kg.lexicon.ambiguous())
    assert ambiguous <= allowed, sorted(ambiguous - allowed)


def test_coverage_minimums(kg):
    report = coverage_report(kg)
    d = report["diseases"]
    assert d["count"] >= 200
    assert d["with_3_features"] == d["with_2_differentials"] == d["count"], d["below_minimum"]
    assert report["south_asian_common"]["missing"] == []
    for ds, c in report["dataset_coverage"].items():
        assert c["missing"] == [], ds
    assert {"curated", "disease_ontology", "hpo", "derm7pt", "uci_dermatology"} <= set(report["edge_sources"])


def test_every_label_of_the_shared_datasets_resolves(kg, shared_data):
    with open(shared_data / "dermamnist" / "labels.csv", newline="") as f:
        derma = {r["dx"] for r in csv.DictReader(f)}
    assert {kg.resolve(x, "dermamnist") for x in derma} == {
        "akiec", "basal_cell_carcinoma", "benign_keratosis_like_lesion", "dermatofibroma", "melanoma",
        "melanocytic_nevus", "vascular_lesion"}
    with open(shared_data / "pad_ufes_20" / "metadata.csv", newline="") as f:
        pad = {r["diagnostic"] for r in csv.DictReader(f)}
    assert len(pad) == 6 and all(kg.resolve(x, "pad_ufes_20") for x in pad)
    isic = {json.loads(p.read_text())["meta"]["clinical"]["diagnosis"]
            for p in (shared_data / "isic_cc0" / "metadata").glob("*.json")}
    assert {kg.resolve(x, "isic") for x in isic} == {"melanoma", "melanocytic_nevus"}
    know = shared_data / "knowledge"
    with open(know / "fitzpatrick17k" / "fitzpatrick17k.csv", newline="") as f:
        fitz = {r["label"] for r in csv.DictReader(f)}
    assert len(fitz) == 114 and all(kg.resolve(x, "fitzpatrick17k") for x in fitz)
    with open(know / "derm7pt" / "meta" / "meta.csv", newline="") as f:
        d7 = {r["diagnosis"] for r in csv.DictReader(f)}
    assert all(kg.resolve(x, "derm7pt") for x in d7)


# Where a source disagrees with the curated malignancy, and why the curated value stands.
KNOWN_DISAGREEMENTS = {
    "langerhans_cell_histiocytosis": "Fitzpatrick17k files it under inflammatory; WHO classifies LCH as a "
                                     "myeloid neoplasm",
}


def test_malignancy_agrees_with_fitzpatrick17k_and_isic_partitions(kg):
    checked = 0
    for node in kg.diseases():
        if node in KNOWN_DISAGREEMENTS:
            continue
        data = kg.node(node)
        part = data.get("fitzpatrick17k_partition")
        if part:
            checked += 1
            want_malignant = part["three"] == "malignant"
            assert (kg.malignancy(node) in ("malignant", "premalignant")) == want_malignant, (node, part)
        isic_class = data.get("isic_class")
        if isic_class in ("Benign", "Malignant"):
            assert (kg.malignancy(node) == "benign") == (isic_class == "Benign"), (node, isic_class)
    assert checked >= 100


@pytest.mark.parametrize(("label", "dataset", "node"), [
    ("akiec", "dermamnist", "akiec"), ("bkl", "dermamnist", "benign_keratosis_like_lesion"),
    ("BCC", "pad_ufes_20", "basal_cell_carcinoma"), ("nevus", None, "melanocytic_nevus"),
    ("seborrheic keratosis", None, "seborrheic_keratosis"), ("Seborrhoeic Keratosis", None, "seborrheic_keratosis"),
    ("melanoma (in situ)", "derm7pt", "melanoma_in_situ"), ("ringworm", None, "tinea_corporis"),
    ("shingles", None, "herpes_zoster"), ("basal_cell_carcinoma", None, "basal_cell_carcinoma"),
])
def test_resolve(kg, label, dataset, node):
    assert kg.resolve(label, dataset) == node


def test_unknown_label_lists_closest_matches(kg):
    with pytest.raises(UnknownLabelError, match=r"unknown label 'melanomma'; closest: melanoma"):
        kg.resolve("melanomma")
    with pytest.raises(UnknownLabelError, match="unknown dataset 'hamm'"):
        kg.resolve("mel", "hamm")
    with pytest.raises(UnknownLabelError, match="unknown node 'psoriasiss'"):
        kg.node("psoriasiss")


def test_taxonomy_queries(kg):
    assert kg.category_path("melanoma")[:4] == ["skin_disease", "neoplasm", "melanocytic_neoplasm",
                                                 "melanocytic_malignant"]
    assert kg.lca("melanoma", "melanocytic_nevus") == "melanocytic_neoplasm"
    assert kg.lca("nodular_bcc", "superficial_bcc") == "basal_cell_carcinoma"
    assert kg.taxonomy_distance("nodular_bcc", "superficial_bcc") == 2
    assert kg.taxonomy_distance("melanoma", "melanoma") == 0
    assert kg.taxonomy_distance("melanoma", "psoriasis") > kg.taxonomy_distance("melanoma", "melanocytic_nevus")
    assert kg.malignancy("melanoma") == "malignant" and kg.malignancy("psoriasis") == "benign"
    assert kg.malignancy("actinic_keratosis") == "premalignant"
    assert kg.malignancy("melanocytic_neoplasm") == "malignant"  # the worst among its descendants
    assert set(kg.members("akiec")) == {"actinic_keratosis", "bowens_disease"}
    assert kg.covers("benign_keratosis_like_lesion", "seborrheic_keratosis")
    assert kg.covers("basal_cell_carcinoma", "nodular_bcc") and not kg.covers("nodular_bcc", "basal_cell_carcinoma")


def test_differentials_and_features(kg):
    diffs = kg.differentials("melanoma")
    weights = [w for _, w in diffs]
    assert weights == sorted(weights, reverse=True) and len(diffs) >= 2
    assert {"melanocytic_nevus", "dysplastic_nevus", "seborrheic_keratosis"} & {d for d, _ in diffs}
    assert "morphology:plaque" in kg.features("psoriasis", "morphology")
    assert "morphology:scale" in kg.features("psoriasis")
    assert "morphology:burrow" in kg.features("scabies")
    top = [d for d, _ in kg.consistent_diseases(["plaque", "silvery scale", "well-demarcated", "extensor surfaces",
                                                 "erythematous"], n=5)]
    assert "psoriasis" in top
    top = [d for d, _ in kg.consistent_diseases(["burrow", "itch worse at night", "finger"], n=3)]
    assert top[0] == "scabies"


def test_derived_facts_have_sources(kg):
    node = kg.node("psoriasis")
    assert node["xrefs"]["doid"].startswith("DOID:") and node["icd10"].startswith("L40")
    edges = [d for _, f, d in kg.g.out_edges("psoriasis", data=True) if d["rel"] != "differential_of"]
    assert any("uci_dermatology" in d["sources"] for d in edges)
    mel = [d for _, f, d in kg.g.out_edges("melanoma", data=True) if d["rel"] == "has_dermoscopic_feature"]
    assert any("derm7pt" in d["sources"] for d in mel)


def test_derived_json_is_reproducible_from_the_sources(shared_data):
    from dermvlm.knowledge.derive import derive

    shipped = json.loads((DATA / "derived.json").read_text())
    assert derive(shared_data / "knowledge") == shipped


def _copy_data(tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(DATA, dst)
    return dst


def test_malformed_curated_files_name_file_and_line(tmp_path):
    data = _copy_data(tmp_path)
    f = data / "diseases" / "neoplasms.yaml"
    lines = f.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("- id: dermatofibroma"))
    lines.insert(i + 1, "  colour_typo: [red]")
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(CuratedError, match=rf"neoplasms\.yaml:{i + 1}: entry 'dermatofibroma': colour_typo"):
        load_curated(data)
    data = _copy_data(tmp_path / "b")
    f = data / "vocab.yaml"
    f.write_text(f.read_text() + "  - {id: broken, name: [unclosed\n")
    with pytest.raises(CuratedError, match=r"vocab\.yaml:\d+: not valid YAML"):
        load_curated(data)


def test_broken_cross_reference_names_the_entry(tmp_path):
    data = _copy_data(tmp_path)
    f = data / "diseases" / "neoplasms.yaml"
    f.write_text(f.read_text().replace("parent: dermal_benign", "parent: dermal_benignn", 1))
    with pytest.raises(CuratedError, match=r"neoplasms\.yaml:\d+: '.*': parent 'dermal_benignn' is neither"):
        build_graph(load_curated(data))
