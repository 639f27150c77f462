"""Derive facts for the graph from the real knowledge sources in ``../shared/data/knowledge``.

Only derived facts are shipped (``knowledge/data/derived.json``), never the non-commercial raw files. Each fact
records its source:
- Disease Ontology (CC0): DOID, ICD-10-CM and MeSH cross-references, DO parent, symptoms, 'has location' sites;
- HPO (free with attribution): labels and exact synonyms of the vocabulary's HPO terms (lexicon), and skin
  phenotypes of genodermatoses from the HPO disease annotations;
- ISIC taxonomies (Apache-2.0): ISIC diagnosis path and benign/malignant class, anatomic-site aliases;
- Derm7pt (metadata, CC BY-NC-SA): per-diagnosis frequencies of the seven-point dermoscopic criteria;
- UCI Dermatology (CC BY 4.0): per-class means of the clinical features of erythemato-squamous diseases;
- Fitzpatrick17k (labels, CC BY-NC-SA): three/nine-partition labels and skin-type counts per condition;
- Derm1M/SkinCon concept terms (CC BY-NC): lexicon phrases for morphology and colour concepts.

``dermvlm kg derive --sources DIR`` regenerates the file; the output is deterministic.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from dermvlm.knowledge.curated import Curated, load_curated
from dermvlm.knowledge.graph import build_graph, feature_node
from dermvlm.knowledge.lexicon import normalise

MIN_DERM7PT_CASES = 10
DERM7PT_MIN_FREQ = 0.3
UCI_MIN_MEAN = 1.0
HPO_MIN_FRACTION = 0.5


def _rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (v or "").strip().strip('"') for k, v in r.items()} for r in csv.DictReader(f, delimiter=delimiter)]


def _disease_names(curated: Curated) -> dict[str, str]:
    """Normalised disease names and synonyms → disease id (first wins: names before synonyms)."""
    out: dict[str, str] = {}
    for d in curated.diseases:
        out.setdefault(normalise(d.name), d.id)
    for d in curated.diseases:
        for s in d.synonyms:
            out.setdefault(normalise(s), d.id)
    return out


def disease_ontology(root: Path, curated: Curated, kg) -> dict[str, Any]:
    do = root / "disease_ontology"
    names = _disease_names(curated)
    label_to_id, parent_of, id_to_label = {}, {}, {}
    for r in _rows(do / "HumanDO.tsv", "\t"):
        label_to_id.setdefault(normalise(r["label"]), r["id"])
        id_to_label[r["id"]] = r["label"]
        parent_of[r["id"]] = r["subClassOf"]
    matched: dict[str, str] = {}
    for key, disease in sorted(names.items()):
        for variant in (key, f"skin {key}", f"cutaneous {key}", f"{key} of skin"):
            if variant in label_to_id and disease not in matched:
                matched[disease] = label_to_id[variant]
    icd, mesh = defaultdict(list), defaultdict(list)
    for r in _rows(do / "ICD10inDO.tsv", "\t"):
        icd[r["id"]] += [x.split(":", 1)[1] for x in r["xrefs"].split("|") if x.startswith("ICD10")]
    for r in _rows(do / "MESHinDO.tsv", "\t"):
        mesh[r["id"]] += [x.split(":", 1)[1] for x in r["xrefs"].split("|") if x.startswith("MESH")]
    xrefs = {}
    for disease, doid in sorted(matched.items()):
        x: dict[str, Any] = {"doid": doid, "do_label": id_to_label[doid], "do_parent": parent_of.get(doid)}
        if icd[doid]:
            x["icd10"] = sorted(icd[doid])[0]
        if mesh[doid]:
            x["mesh"] = sorted(mesh[doid])[0]
        xrefs[disease] = x
    doid_to_disease = {v: k for k, v in matched.items()}
    edges = []
    for r in _rows(do / "disease-symptom.tsv", "\t"):
        disease = doid_to_disease.get(r["disease_id"])
        if disease:
            for node, kind in kg.lexicon.lookup(r["symptom_label"]):
                if kind in ("symptom", "morphology", "colour"):
                    rel = {"symptom": "has_symptom", "morphology": "has_morphology", "colour": "has_colour"}[kind]
                    edges.append({"disease": disease, "feature": node, "rel": rel, "source": "disease_ontology",
                                  "evidence": f"{r['disease_id']} has symptom {r['symptom_id']} {r['symptom_label']}"})
    loc = re.compile(r"'disease has location' some '?([^'|]+)'?")
    for r in _rows(do / "DO-subClassOf-anonymous.tsv", "\t"):
        disease = doid_to_disease.get(r["ID"])
        if not disease:
            continue
        for place in loc.findall(r["SubClass Of [ANON]"]):
            place = re.sub(r"^(skin of( the)?|zone of skin of) ", "", place.strip())
            for node, kind in kg.lexicon.lookup(place):
                if kind == "site":
                    edges.append({"disease": disease, "feature": node, "rel": "typical_site",
                                  "source": "disease_ontology", "evidence": f"{r['ID']} has location {place}"})
    return {"xrefs": xrefs, "feature_edges": edges}


def _obo_terms(path: Path) -> dict[str, dict[str, Any]]:
    terms: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line == "[Term]":
            cur = {"synonyms": [], "is_a": []}
        elif cur is not None and line.startswith("id: "):
            terms[line[4:]] = cur
        elif cur is not None and line.startswith("name: "):
            cur["name"] = line[6:]
        elif cur is not None and line.startswith("synonym: ") and " EXACT" in line:
            cur["synonyms"].append(line.split('"')[1])
        elif cur is not None and line.startswith("is_a: "):
            cur["is_a"].append(line[6:].split(" ")[0])
        elif not line.strip():
            cur = None if cur is not None and "name" in cur else cur
    return terms


def hpo(root: Path, curated: Curated, kg) -> dict[str, Any]:
    terms = _obo_terms(root / "hpo" / "hp_integument_subset.obo")
    hpo_to_feature = {f.hpo: feature_node(kind, f.id) for kind, fs in curated.features.items() for f in fs if f.hpo}
    lexicon = []
    for hid, node in sorted(hpo_to_feature.items()):
        t = terms.get(hid)
        if not t:
            continue
        for phrase in [t["name"], *t["synonyms"]]:
            hits = kg.lexicon.lookup(phrase)
            if len(phrase) <= 60 and not any(k in ("disease", "category") for _, k in hits):
                lexicon.append({"node": node, "phrase": phrase.lower(), "source": f"hpo {hid}"})

    def feature_of(hid: str, seen: set[str] | None = None) -> str | None:
        seen = seen or set()
        if hid in hpo_to_feature:
            return hpo_to_feature[hid]
        for parent in terms.get(hid, {}).get("is_a", []):
            if parent not in seen:
                seen.add(parent)
                f = feature_of(parent, seen)
                if f:
                    return f
        return None

    geno = [d for d in curated.diseases if d.parent == "genodermatosis" or d.id in ("xeroderma_pigmentosum",)]
    annotations: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    path = root / "hpo" / "phenotype_integument_subset.hpoa"
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split("\t")
    for ln in lines[1:]:
        r = dict(zip(header, ln.split("\t"), strict=False))
        if r.get("qualifier") == "NOT":
            continue
        name = normalise(r["disease_name"])
        for d in geno:
            keys = [normalise(d.name), *[normalise(s) for s in d.synonyms]]
            if any(name == k or name.startswith(k + " ") for k in keys):
                annotations[d.id][r["database_id"]].add(r["hpo_id"])
    edges = []
    for disease, entries in sorted(annotations.items()):
        counts: Counter[str] = Counter()
        for hids in entries.values():
            counts.update({f for f in (feature_of(h) for h in hids) if f})
        for feature, n in sorted(counts.items()):
            if n / len(entries) >= HPO_MIN_FRACTION:
                rel = {"morphology": "has_morphology", "colour": "has_colour", "symptom": "has_symptom",
                       "distribution": "has_distribution", "border": "has_border",
                       "site": "typical_site", "dermoscopic": "has_dermoscopic_feature"}[feature.split(":")[0]]
                edges.append({"disease": disease, "feature": feature, "rel": rel, "source": "hpo",
                              "evidence": f"annotated in {n}/{len(entries)} HPO disease entries"})
    return {"lexicon": lexicon, "feature_edges": edges}


def isic(root: Path, curated: Curated, kg) -> dict[str, Any]:
    names = _disease_names(curated)
    attrs: dict[str, dict[str, Any]] = {}
    for r in _rows(root / "isic_taxonomy" / "isic_diagnosis_hierarchy.csv"):
        leaf = [r[f"level_{i}"] for i in range(1, 6) if r[f"level_{i}"]][-1]
        disease = names.get(normalise(leaf))
        if disease and disease not in attrs:
            attrs[disease] = {"isic_path": r["path"], "isic_class": r["level_1"]}
    sites = {}
    for r in _rows(root / "isic_taxonomy" / "isic_anatom_site_hierarchy.csv"):
        levels = [r[f"level_{i}"] for i in range(1, 6) if r[f"level_{i}"]]
        for name in reversed(levels):
            hits = [n for n, k in kg.lexicon.lookup(name) if k == "site"]
            if hits:
                sites[r["path"]] = hits[0]
                break
    return {"attributes": attrs, "site_aliases": {"isic": dict(sorted(sites.items()))}}


DERM7PT_MAP = {
    ("pigment_network", "atypical"): "atypical_pigment_network",
    ("pigment_network", "typical"): "typical_pigment_network",
    ("streaks", "irregular"): "streaks", ("streaks", "regular"): "regular_streaks",
    ("dots_and_globules", "irregular"): "irregular_dots_globules",
    ("dots_and_globules", "regular"): "regular_dots_globules",
    ("pigmentation", "diffuse irregular"): "irregular_blotches",
    ("pigmentation", "localized irregular"): "irregular_blotches",
    ("regression_structures", "blue areas"): "regression_structures",
    ("regression_structures", "white areas"): "regression_structures",
    ("regression_structures", "combinations"): "regression_structures",
    ("blue_whitish_veil", "present"): "blue_whitish_veil",
    ("vascular_structures", "arborizing"): "arborizing_vessels",
    ("vascular_structures", "dotted"): "dotted_vessels",
    ("vascular_structures", "hairpin"): "hairpin_vessels",
    ("vascular_structures", "linear irregular"): "atypical_vascular_pattern",
    ("vascular_structures", "within regression"): "atypical_vascular_pattern",
}


def derm7pt(root: Path, curated: Curated, kg) -> dict[str, Any]:
    table = curated.dataset_labels.get("derm7pt", {})
    by_dx: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in _rows(root / "derm7pt" / "meta" / "meta.csv"):
        node = table.get(r["diagnosis"])
        if node:
            by_dx[node].append(r)
    edges = []
    for disease, rows in sorted(by_dx.items()):
        if len(rows) < MIN_DERM7PT_CASES:
            continue
        counts: Counter[str] = Counter()
        for r in rows:
            counts.update({f for (col, val), f in DERM7PT_MAP.items() if r[col] == val})
        for f, n in sorted(counts.items()):
            if n / len(rows) >= DERM7PT_MIN_FREQ:
                edges.append({"disease": disease, "feature": feature_node("dermoscopic", f),
                              "rel": "has_dermoscopic_feature", "source": "derm7pt",
                              "evidence": f"{n}/{len(rows)} Derm7pt cases ({n / len(rows):.2f})"})
    return {"feature_edges": edges}


UCI_CLASSES = {1: "psoriasis", 2: "seborrheic_dermatitis", 3: "lichen_planus", 4: "pityriasis_rosea",
               5: "eczema", 6: "pityriasis_rubra_pilaris"}
UCI_FEATURES = {"erythema": "colour:red", "scaling": "morphology:scale", "definite_borders": "border:well_demarcated",
                "itching": "symptom:itch", "koebner_phenomenon": "distribution:koebner",
                "polygonal_papules": "morphology:papule", "follicular_papules": "morphology:follicular_papule",
                "oral_mucosal_involvement": "site:oral_mucosa", "knee_and_elbow_involvement": "distribution:extensor",
                "scalp_involvement": "site:scalp"}


def uci(root: Path, curated: Curated, kg) -> dict[str, Any]:
    rows = _rows(root / "uci_dermatology" / "dermatology.data")
    edges = []
    for cls, disease in UCI_CLASSES.items():
        members = [r for r in rows if r["Classification"] == str(cls)]
        for col, feature in UCI_FEATURES.items():
            mean = sum(int(r[col]) for r in members) / len(members)
            if mean >= UCI_MIN_MEAN:
                rel = {"colour": "has_colour", "morphology": "has_morphology", "border": "has_border",
                       "symptom": "has_symptom", "distribution": "has_distribution",
                       "site": "typical_site"}[feature.split(":")[0]]
                edges.append({"disease": disease, "feature": feature, "rel": rel, "source": "uci_dermatology",
                              "evidence": f"mean {col} {mean:.2f}/3 over {len(members)} patients"})
    return {"feature_edges": edges}


def fitzpatrick17k(root: Path, curated: Curated, kg) -> dict[str, Any]:
    table = curated.dataset_labels.get("fitzpatrick17k", {})
    attrs: dict[str, dict[str, Any]] = {}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in _rows(root / "fitzpatrick17k" / "fitzpatrick17k.csv"):
        node = table.get(r["label"])
        if not node:
            continue
        attrs.setdefault(node, {"fitzpatrick17k_partition": {
            "three": r["three_partition_label"], "nine": r["nine_partition_label"]}})
        counts[node][r["fitzpatrick_scale"]] += 1
    for node, c in counts.items():
        attrs[node]["fitzpatrick17k_skin_types"] = dict(sorted(c.items()))
    return {"attributes": attrs}


def derm1m(root: Path, curated: Curated, kg) -> dict[str, Any]:
    concepts = json.loads((root / "derm1m" / "ConceptTerms.json").read_text(encoding="utf-8"))
    lexicon = []
    for key, terms in sorted(concepts.items()):
        targets = {n for n, k in kg.lexicon.lookup(key.split("(")[0]) if k in ("morphology", "colour")}
        if len(targets) != 1:
            continue
        node = targets.pop()
        for t in terms:
            hits = kg.lexicon.lookup(t)
            if not any(k in ("disease", "category") or n != node for n, k in hits):
                lexicon.append({"node": node, "phrase": t.lower(), "source": f"derm1m concept {key}"})
    return {"lexicon": lexicon}


SOURCES = {"disease_ontology": disease_ontology, "hpo": hpo, "isic_taxonomy": isic, "derm7pt": derm7pt,
           "uci_dermatology": uci, "fitzpatrick17k": fitzpatrick17k, "derm1m": derm1m}


def derive(sources: str | Path, curated: Curated | None = None) -> dict[str, Any]:
    """All derived facts as one JSON-able dict (sorted, deterministic)."""
    root = Path(sources)
    curated = curated or load_curated()
    kg = build_graph(curated, None)
    out: dict[str, Any] = {"xrefs": {}, "lexicon": [], "feature_edges": [], "attributes": {}, "site_aliases": {},
                           "sources": {}}
    for name, fn in SOURCES.items():
        if not (root / name).exists():
            raise FileNotFoundError(f"knowledge source folder missing: {root / name}")
        part = fn(root, curated, kg)
        for key, value in part.items():
            if isinstance(value, list):
                out[key] += value
            else:
                for k, v in value.items():
                    if isinstance(v, dict):
                        out[key].setdefault(k, {}).update(v)
                    else:
                        out[key][k] = v
        out["sources"][name] = {k: len(v) for k, v in part.items()}
    out["lexicon"] = sorted({(t["node"], t["phrase"]): t for t in out["lexicon"]}.values(),
                            key=lambda t: (t["node"], t["phrase"]))
    out["feature_edges"] = sorted({(e["disease"], e["feature"], e["source"]): e for e in out["feature_edges"]}.values(),
                                  key=lambda e: (e["disease"], e["feature"], e["source"]))
    return json.loads(json.dumps(out, sort_keys=True))
