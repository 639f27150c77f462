"""Coverage of the graph: counts by kind, dataset labels that resolve, and the per-disease minimums."""

from __future__ import annotations

from typing import Any

from dermvlm.knowledge.graph import KnowledgeGraph, UnknownLabelError

# Common outpatient conditions of South Asian practice that the graph must know by name.
SOUTH_ASIAN_COMMON = (
    "tinea corporis", "tinea cruris", "tinea capitis", "tinea pedis", "tinea incognito", "scabies", "vitiligo",
    "acne vulgaris", "melasma", "pityriasis versicolor", "urticaria", "eczema", "atopic dermatitis", "psoriasis",
    "seborrheic dermatitis", "impetigo", "pediculosis", "leprosy", "cutaneous tuberculosis", "cutaneous candidiasis",
    "intertrigo", "miliaria", "polymorphic light eruption", "lichen planus", "pityriasis alba",
    "post-inflammatory hyperpigmentation", "common wart", "molluscum contagiosum", "herpes zoster", "varicella",
    "cutaneous leishmaniasis", "acanthosis nigricans", "keloid", "alopecia areata", "onychomycosis",
    "allergic contact dermatitis", "fixed drug eruption", "dermatosis papulosa nigra", "lichen planus pigmentosus",
    "erythema dyschromicum perstans", "frictional dermatitis", "secondary syphilis", "cellulitis", "furuncle",
)


def coverage_report(kg: KnowledgeGraph) -> dict[str, Any]:
    report = kg.stats()
    datasets = {}
    for ds, table in kg.dataset_labels.items():
        ok = [label for label in table if _resolves(kg, label, ds)]
        datasets[ds] = {"labels": len(table), "covered": len(ok),
                        "missing": sorted(set(table) - set(ok))}
    report["dataset_coverage"] = dict(sorted(datasets.items()))
    common = {name: _resolves(kg, name, None) for name in SOUTH_ASIAN_COMMON}
    report["south_asian_common"] = {"labels": len(common), "covered": sum(common.values()),
                                    "missing": sorted(k for k, v in common.items() if not v)}
    diseases = kg.diseases()
    n_feat = {d: len(kg.features(d)) for d in diseases}
    n_diff = {d: len(kg.differentials(d)) for d in diseases}
    report["diseases"] = {
        "count": len(diseases),
        "with_3_features": sum(v >= 3 for v in n_feat.values()),
        "with_2_differentials": sum(v >= 2 for v in n_diff.values()),
        "below_minimum": sorted(d for d in diseases if n_feat[d] < 3 or n_diff[d] < 2),
        "malignancy": {m: sum(kg.malignancy(d) == m for d in diseases) for m in ("benign", "premalignant",
                                                                                  "malignant")},
        "with_icd10": sum(bool(kg.node(d).get("icd10")) for d in diseases),
        "with_ontology_xref": sum(bool(kg.node(d).get("xrefs")) for d in diseases),
    }
    sources: dict[str, int] = {}
    for _, _, s in kg.g.edges(data="sources"):
        for name in s or []:
            sources[name] = sources.get(name, 0) + 1
    report["edge_sources"] = dict(sorted(sources.items()))
    report["lexicon_phrases"] = len(kg.lexicon.index)
    return report


def _resolves(kg: KnowledgeGraph, label: str, dataset: str | None) -> bool:
    try:
        kg.resolve(label, dataset)
        return True
    except UnknownLabelError:
        return False
