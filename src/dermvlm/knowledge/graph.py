"""The dermatology knowledge graph (networkx): build from curated + derived facts, resolve labels, query.

Node ids: categories and diseases by their curated id (``melanoma``, ``melanocytic_malignant``); feature nodes
as ``kind:id`` (``morphology:scale``, ``site:face``). Edges carry ``rel`` (``is_a``, ``member_of``,
``has_morphology``, ``has_colour``, ``has_border``, ``has_distribution``, ``typical_site``, ``has_symptom``,
``has_dermoscopic_feature``, ``lacks_feature``, ``differential_of``, ``part_of``) and ``sources`` (where the fact
comes from: ``curated``, ``disease_ontology``, ``hpo``, ``derm7pt``, ``uci_dermatology``, ...).
"""

from __future__ import annotations

import difflib
import functools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx

from dermvlm.knowledge.curated import (
    DATA,
    DISEASE_FEATURE_FIELDS,
    FEATURE_KINDS,
    Curated,
    CuratedError,
    load_curated,
)
from dermvlm.knowledge.lexicon import Lexicon, normalise

ROOT = "skin_disease"
FEATURE_RELS = {rel for _, rel in DISEASE_FEATURE_FIELDS.values()}
MALIGNANCY_RANK = {"benign": 0, "premalignant": 1, "malignant": 2}


class UnknownLabelError(KeyError):
    """A label or node id the graph does not know; the message lists the closest matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def feature_node(kind: str, fid: str) -> str:
    return f"{kind}:{fid}"


class KnowledgeGraph:
    """The graph plus its lexicon and label maps; all queries are methods."""

    def __init__(self, g: nx.MultiDiGraph, lexicon: Lexicon, dataset_labels: dict[str, dict[str, str]]):
        self.g = g
        self.lexicon = lexicon
        self.dataset_labels = {ds: {normalise(k): v for k, v in m.items()} for ds, m in dataset_labels.items()}
        self._names: dict[str, list[str]] = {}
        # The graph is immutable once built: index the hot queries (the scorer calls them per response).
        self._parent: dict[str, str] = {}
        self._children: dict[str, list[str]] = {}
        self._members: dict[str, list[str]] = {}
        self._own_features: dict[str, list[str]] = {}
        self._lacks: dict[str, list[str]] = {}
        self._diff_weights: dict[str, dict[str, float]] = {}
        for a, b, data in g.edges(data=True):
            rel = data["rel"]
            if rel == "is_a":
                self._parent[a] = b
                self._children.setdefault(b, []).append(a)
            elif rel == "member_of":
                self._members.setdefault(b, []).append(a)
            elif rel in FEATURE_RELS:
                self._own_features.setdefault(a, []).append(b)
            elif rel == "lacks_feature":
                self._lacks.setdefault(a, []).append(b)
            elif rel == "differential_of":
                self._diff_weights.setdefault(a, {})[b] = data["weight"]
        self._ancestors: dict[str, list[str]] = {}
        self._features: dict[tuple[str, str | None], list[str]] = {}
        self._differentials: dict[str, list[tuple[str, float]]] = {}
        for node, data in g.nodes(data=True):
            if data["kind"] in ("disease", "category"):
                for phrase in [data["name"], *data.get("synonyms", []), *data.get("abbreviations", []), node]:
                    key = normalise(phrase.replace("_", " "))
                    if node not in self._names.setdefault(key, []):
                        self._names[key].append(node)

    # ------------------------------------------------------------------ nodes and labels
    def kind(self, node: str) -> str:
        return self.g.nodes[node]["kind"]

    def name(self, node: str) -> str:
        return self.g.nodes[node]["name"]

    def diseases(self) -> list[str]:
        return sorted(n for n, d in self.g.nodes(data=True) if d["kind"] == "disease")

    def categories(self) -> list[str]:
        return sorted(n for n, d in self.g.nodes(data=True) if d["kind"] == "category")

    def has(self, node: str) -> bool:
        return node in self.g

    def node(self, node: str) -> dict[str, Any]:
        self._require(node)
        return dict(self.g.nodes[node])

    def _require(self, node: str) -> None:
        if node not in self.g:
            raise UnknownLabelError(f"unknown node {node!r}; closest: {', '.join(self.suggest(node)) or 'none'}")

    def suggest(self, text: str, n: int = 5, cutoff: float = 0.5) -> list[str]:
        """Closest disease/category names and ids to ``text`` (difflib's similarity at least ``cutoff``)."""
        key = normalise(text.replace("_", " "))
        names = difflib.get_close_matches(key, list(self._names), n=n, cutoff=cutoff)
        out: list[str] = []
        for name in names:
            for node in self._names[name]:
                if node not in out:
                    out.append(node)
        return out[:n]

    def resolve(self, label: str, dataset: str | None = None) -> str:
        """Map a dataset code or a disease name/synonym/abbreviation to a node id.

        ``dataset`` (e.g. ``dermamnist``, ``pad_ufes_20``) consults that dataset's code table first, so "akiec"
        and "BCC" resolve as the dataset means them. Unknown labels raise ``UnknownLabelError`` listing the
        closest matches.
        """
        key = normalise(label.replace("_", " ")) if label else ""
        if dataset is not None:
            table = self.dataset_labels.get(dataset)
            if table is None:
                raise UnknownLabelError(
                    f"unknown dataset {dataset!r}; known: {', '.join(sorted(self.dataset_labels))}")
            if key in table:
                return table[key]
        if label in self.g and self.kind(label) in ("disease", "category"):
            return label
        hits = self._names.get(key, [])
        diseases = [h for h in hits if self.kind(h) == "disease"]
        if len(diseases) == 1 or (len(hits) == 1):
            return (diseases or hits)[0]
        if len(diseases) > 1:
            raise UnknownLabelError(f"ambiguous label {label!r}: {', '.join(diseases)}; pass dataset=")
        for table in self.dataset_labels.values():
            if key in table:
                return table[key]
        where = f" in dataset {dataset!r}" if dataset else ""
        raise UnknownLabelError(
            f"unknown label {label!r}{where}; closest: {', '.join(self.suggest(label)) or 'none'}")

    # ------------------------------------------------------------------ taxonomy
    def parent(self, node: str) -> str | None:
        return self._parent.get(node)

    def ancestors(self, node: str) -> list[str]:
        """Parents up to the root, nearest first."""
        cached = self._ancestors.get(node)
        if cached is None:
            self._require(node)
            cached, p = [], self._parent.get(node)
            while p is not None:
                cached.append(p)
                p = self._parent.get(p)
            self._ancestors[node] = cached
        return list(cached)

    def category_path(self, node: str) -> list[str]:
        """Root → ... → node."""
        return [*reversed(self.ancestors(node)), node]

    def children(self, node: str) -> list[str]:
        return sorted(self._children.get(node, []))

    def descendants(self, node: str) -> set[str]:
        out, stack = set(), [node]
        while stack:
            for c in self.children(stack.pop()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def members(self, node: str) -> list[str]:
        """Diseases grouped under an umbrella label (e.g. HAM10000's ``bkl``)."""
        return sorted(self._members.get(node, []))

    def site_chain(self, node: str) -> list[str]:
        """A site node and every region it is part of, innermost first (``site:nose`` → face → head ...)."""
        chain = [node]
        while True:
            nxt = [p for _, p, rel in self.g.out_edges(chain[-1], data="rel") if rel == "part_of"]
            if not nxt or nxt[0] in chain:
                return chain
            chain.append(nxt[0])

    def sites_related(self, a: str, b: str) -> bool:
        """Whether one site lies within the other (the same site included)."""
        return a in self.site_chain(b) or b in self.site_chain(a)

    def covers(self, gold: str, answer: str) -> bool:
        """True when ``answer`` names ``gold`` itself, a subtype of it, or a member of the umbrella ``gold``."""
        if answer == gold:
            return True
        anc = self.ancestors(answer)
        return gold in anc or any(answer == m or m in anc for m in self._members.get(gold, ()))

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor in the is_a tree."""
        pa = [a, *self.ancestors(a)]
        pb = set([b, *self.ancestors(b)])
        return next(x for x in pa if x in pb)

    def depth(self, node: str) -> int:
        """Number of is_a edges from ``node`` up to the root."""
        return len(self.ancestors(node))

    def taxonomy_distance(self, a: str, b: str) -> int:
        """Number of is_a edges on the path a → lowest common ancestor → b."""
        return self.depth(a) + self.depth(b) - 2 * self.depth(self.lca(a, b))

    def malignancy(self, node: str) -> str | None:
        """benign / premalignant / malignant for diseases; for categories, the highest among descendants."""
        self._require(node)
        m = self.g.nodes[node].get("malignancy")
        if m is not None:
            return m
        ranks = [MALIGNANCY_RANK[self.g.nodes[d]["malignancy"]] for d in self.descendants(node)
                 if self.kind(d) == "disease"]
        return {v: k for k, v in MALIGNANCY_RANK.items()}[max(ranks)] if ranks else None

    # ------------------------------------------------------------------ features and differentials
    def features(self, disease: str, kind: str | None = None) -> list[str]:
        """Feature node ids of a disease (for an umbrella: its own plus its members')."""
        key = (disease, kind)
        cached = self._features.get(key)
        if cached is None:
            self._require(disease)
            out: set[str] = set()
            for n in [disease, *self._members.get(disease, [])]:
                out.update(f for f in self._own_features.get(n, []) if kind is None or self.kind(f) == kind)
            cached = self._features[key] = sorted(out)
        return list(cached)

    def lacks(self, disease: str) -> list[str]:
        """Feature node ids whose presence argues against the disease."""
        self._require(disease)
        return sorted(self._lacks.get(disease, []))

    def differentials(self, disease: str, n: int | None = None) -> list[tuple[str, float]]:
        """Differential diagnoses ranked by weight (then by shared features), highest first."""
        cached = self._differentials.get(disease)
        if cached is None:
            self._require(disease)
            own = set(self.features(disease))
            scored = [(d, w, len(own & set(self.features(d)))) for d, w in self._diff_weights.get(disease, {}).items()]
            scored.sort(key=lambda t: (-t[1], -t[2], t[0]))
            cached = self._differentials[disease] = [(d, w) for d, w, _ in scored]
        return cached[:n]

    def consistent_diseases(self, features: Iterable[str], n: int = 10) -> list[tuple[str, float]]:
        """Diseases ranked by how well observed features fit: recall of the observed, minus contradictions."""
        obs = {f if ":" in f else self._feature_id(f) for f in features}
        ranked = []
        for d in self.diseases():
            if self.g.nodes[d].get("umbrella"):
                continue
            feats = set(self.features(d))
            hit = len(obs & feats)
            if not hit:
                continue
            contra = len(obs & set(self.lacks(d)))
            score = (hit - 2 * contra) / len(obs) + 0.01 * hit / max(len(feats), 1)
            ranked.append((d, round(score, 4)))
        ranked.sort(key=lambda t: (-t[1], t[0]))
        return ranked[:n]

    def _feature_id(self, phrase: str) -> str:
        hits = [n for n, k in self.lexicon.lookup(phrase) if k in FEATURE_KINDS]
        if not hits:
            raise UnknownLabelError(f"unknown feature {phrase!r}")
        return hits[0]

    # ------------------------------------------------------------------ summary
    def stats(self) -> dict[str, Any]:
        kinds = Counter(d["kind"] for _, d in self.g.nodes(data=True))
        rels = Counter(r for _, _, r in self.g.edges(data="rel"))
        return {"nodes": self.g.number_of_nodes(), "edges": self.g.number_of_edges(),
                "nodes_by_kind": dict(sorted(kinds.items())), "edges_by_relation": dict(sorted(rels.items()))}


# ---------------------------------------------------------------------- building


# Primary lesions raised above the skin by definition: a disease with one has the record-checkable feature
# ``morphology:elevated`` (PAD-UFES-20 records elevation per image).
ELEVATED_MORPHOLOGY = frozenset({"papule", "plaque", "nodule", "tumour", "vesicle", "bulla", "pustule", "wheal",
                                 "cyst_lesion", "pedunculated", "verrucous", "keloidal", "follicular_papule",
                                 "cutaneous_horn"})


def build_graph(curated: Curated, derived: dict[str, Any] | None = None) -> KnowledgeGraph:
    """Assemble the graph from curated entries and derived (ontology) facts; check every cross-reference."""
    g = nx.MultiDiGraph()
    lex = Lexicon()
    where = curated.where

    def fail(entry: str, msg: str) -> None:
        raise CuratedError(f"{where.get(entry, '?')}: {entry!r}: {msg}")

    for c in curated.categories:
        g.add_node(c.id, kind="category", name=c.name, synonyms=c.synonyms, sources=["curated"])
        lex.add_many([c.name, *c.synonyms], c.id, "category")
    for kind, feats in curated.features.items():
        for f in feats:
            g.add_node(feature_node(kind, f.id), kind=kind, name=f.name, synonyms=list(f.synonyms),
                       hpo=f.hpo, sources=["curated"])
            lex.add_many([f.name, *f.synonyms], feature_node(kind, f.id), kind)
    for d in curated.diseases:
        g.add_node(d.id, kind="disease", name=d.name, synonyms=d.synonyms, abbreviations=d.abbreviations,
                   malignancy=d.malignancy, icd10=d.icd10, age_bands=d.age, red_flags=d.red_flags,
                   referral=d.referral, description=d.description, umbrella=bool(d.members), sources=["curated"])
        lex.add_many([d.name, *d.synonyms], d.id, "disease")
        lex.add_many([a for a in d.abbreviations if len(a) > 2], d.id, "disease")
    for c in curated.categories:
        if c.parent is not None:
            if c.parent not in g or g.nodes[c.parent]["kind"] != "category":
                fail(c.id, f"parent {c.parent!r} is not a category")
            g.add_edge(c.id, c.parent, rel="is_a", sources=["curated"])
    for f in curated.features["site"]:
        if f.parent:
            if feature_node("site", f.parent) not in g:
                fail(feature_node("site", f.id), f"parent site {f.parent!r} unknown")
            g.add_edge(feature_node("site", f.id), feature_node("site", f.parent), rel="part_of",
                       sources=["curated"])
    for d in curated.diseases:
        if d.parent not in g or g.nodes[d.parent]["kind"] not in ("category", "disease"):
            fail(d.id, f"parent {d.parent!r} is neither a category nor a disease")
        g.add_edge(d.id, d.parent, rel="is_a", sources=["curated"])
        for fld, (kind, rel) in DISEASE_FEATURE_FIELDS.items():
            for fid in getattr(d, fld):
                node = feature_node(kind, fid)
                if node not in g:
                    fail(d.id, f"{fld}: unknown {kind} {fid!r}")
                g.add_edge(d.id, node, rel=rel, sources=["curated"])
        raised = [m for m in d.morphology if m in ELEVATED_MORPHOLOGY]
        if raised and "morphology:elevated" in g:  # a papule, plaque, nodule ... is raised by definition
            g.add_edge(d.id, "morphology:elevated", rel="has_morphology", sources=[f"implied by {raised[0]}"])
        for fid in d.absent:
            nodes = [feature_node(k, fid) for k in FEATURE_KINDS if feature_node(k, fid) in g]
            if not nodes:
                fail(d.id, f"absent: unknown feature {fid!r}")
            g.add_edge(d.id, nodes[0], rel="lacks_feature", sources=["curated"])
        for m in d.members:
            if m not in g:
                fail(d.id, f"members: unknown disease {m!r}")
    for d in curated.diseases:
        for m in d.members:
            g.add_edge(m, d.id, rel="member_of", sources=["curated"])
        for other, w in d.differentials.items():
            if other not in g or g.nodes[other]["kind"] != "disease":
                fail(d.id, f"differentials: unknown disease {other!r}")
            _add_differential(g, d.id, other, w)
    if derived:
        _apply_derived(g, lex, derived)
    kg = KnowledgeGraph(g, lex, curated.dataset_labels)
    for ds, table in curated.dataset_labels.items():
        for label, node in table.items():
            if node not in g:
                raise CuratedError(f"dataset_labels.yaml: {ds}: {label!r} → unknown node {node!r}")
    return kg


def _add_differential(g: nx.MultiDiGraph, a: str, b: str, w: float) -> None:
    """Symmetric weighted differential edge; a pair listed twice keeps the larger weight."""
    for x, y in ((a, b), (b, a)):
        existing = [k for k, data in g.get_edge_data(x, y, default={}).items() if data["rel"] == "differential_of"]
        if existing:
            data = g.edges[x, y, existing[0]]
            data["weight"] = max(data["weight"], w)
        else:
            g.add_edge(x, y, rel="differential_of", weight=float(w), sources=["curated"])


def _apply_derived(g: nx.MultiDiGraph, lex: Lexicon, derived: dict[str, Any]) -> None:
    """Merge ontology-derived facts: xrefs, lexicon terms and evidence-backed feature edges."""
    for node, xrefs in derived.get("xrefs", {}).items():
        if node in g:
            g.nodes[node].setdefault("xrefs", {}).update(xrefs)
            if not g.nodes[node].get("icd10") and xrefs.get("icd10"):
                g.nodes[node]["icd10"] = xrefs["icd10"]
    for term in derived.get("lexicon", []):
        if term["node"] in g:
            lex.add(term["phrase"], term["node"], g.nodes[term["node"]]["kind"])
            g.nodes[term["node"]].setdefault("lexicon_sources", {})[term["phrase"]] = term["source"]
    for e in derived.get("feature_edges", []):
        d, f = e["disease"], e["feature"]
        if d not in g or f not in g:
            continue
        same = [k for k, data in g.get_edge_data(d, f, default={}).items() if data["rel"] == e["rel"]]
        if same:
            data = g.edges[d, f, same[0]]
            data["sources"] = sorted(set(data["sources"]) | {e["source"]})
            data.setdefault("evidence", {})[e["source"]] = e.get("evidence")
        else:
            g.add_edge(d, f, rel=e["rel"], sources=[e["source"]], evidence={e["source"]: e.get("evidence")})
    for node, attrs in derived.get("attributes", {}).items():
        if node in g:
            g.nodes[node].update(attrs)


DERIVED = DATA / "derived.json"


@functools.lru_cache(maxsize=4)
def _cached(data_dir: str, derived_path: str) -> KnowledgeGraph:
    curated = load_curated(data_dir)
    p = Path(derived_path)
    derived = json.loads(p.read_text()) if p.exists() else None
    return build_graph(curated, derived)


def load_graph(data_dir: str | Path = DATA, derived: str | Path = DERIVED) -> KnowledgeGraph:
    """The knowledge graph (built once per process and cached)."""
    return _cached(str(data_dir), str(derived))
