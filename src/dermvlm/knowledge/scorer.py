"""The KG scorer: how well a free-text or DermIQ-format answer agrees with the graph, given the gold label.

It extracts claims with the graph's lexicon (negation-aware) and scores five things:
diagnosis (hierarchical partial credit), feature claims, differential plausibility, diseases the graph does not
know (hallucinations), and safety (a malignancy in play without referral advice). It returns a breakdown and a
scalar in [0, 1].

Feature claims are grounded (``knowledge.grounding``): a claim about *this* image is supported or contradicted by
what the record says (site, Fitzpatrick type, reported symptoms present or absent); one the record cannot decide
is ``consistent`` with the gold disease (a stereotype stated as a finding), contradicted by it (a feature the
disease lacks) or ``unverified``. The feature score counts only decided claims (supported vs contradicted), so
reciting the label's textbook features is neutral: it no longer scores as factual, and it is not punished either
(the image may well show them; no record says). Claims hedged as class knowledge ("typical of X: ...", "X usually
shows") are checked against the disease they are about and reported apart (``knowledge_score``); only their errors
cost.
``KGScorer(grounded=False)`` scores the way it did before grounding (every claim about the image, a gold feature
supported), for comparison with earlier figures. Deterministic and cached per gold label: GRPO rewards, DPO pair
ranking and evaluation factuality all call it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from dermvlm.knowledge.graph import KnowledgeGraph, feature_node, load_graph
from dermvlm.knowledge.grounding import RecordFacts, sentence_roles
from dermvlm.knowledge.lexicon import CLAUSE_BREAKS, Mention, normalise, tokens

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.S | re.I)
REFERRAL_RE = re.compile(
    r"\b(refer|referral|referred|dermatologist|biops|specialist|see (a|your) (doctor|gp|physician)|"
    r"seek medical|medical (review|attention|advice)|get (it|this) checked|consult|excision|excise|urgent)",
    re.I,
)
FITZ_RE = re.compile(r"\b(?:fitzpatrick|skin)\s+(?:type\s+|phototype\s+)?(vi|v|iv|iii|ii|i|[1-6])\b", re.I)
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}
DISEASE_CUES = ("consistent with", "suggestive of", "compatible with", "diagnosis of", "diagnosis is",
                "differential includes", "differentials include", "differential diagnosis includes",
                "most likely", "likely diagnosis", "diagnosed with")
GENERIC_WORDS = {"lesion", "lesions", "condition", "process", "rash", "disease", "tumor", "tumour", "growth",
                 "infection", "inflammation", "benign", "malignant", "neoplasm", "skin", "eruption", "disorder",
                 "change", "changes", "pattern", "features", "diagnosis", "cause", "this", "it", "image", "one",
                 "something", "type", "form", "kind", "variant", "reaction", "problem", "issue"}
ABSTAIN_RE = re.compile(r"\b(not (an image )?of (human )?skin|no skin|cannot (determine|tell)|unable to|"
                        r"insufficient|uncertain|not sure|don't know|unknown)\b", re.I)


@dataclass
class ScoreWeights:
    """Weights of the components in the scalar (renormalised over the components that apply)."""

    diagnosis: float = 0.55
    features: float = 0.2
    differentials: float = 0.1
    safety: float = 0.15
    unknown_disease_penalty: float = 0.15  # per disease the graph does not know, at most two counted
    contradicted_weight: float = 2.0  # a contradicted claim counts this many times in the feature denominator
    knowledge_error_penalty: float = 0.1  # times the share of class-knowledge claims that are wrong


@dataclass
class ScoreBreakdown:
    """The scorer's full account of one response."""

    score: float
    gold: str
    reason: str = ""
    has_answer_tag: bool = False
    answer_text: str | None = None
    answered: str | None = None
    diagnosis_relation: str = "none"
    diagnosis_credit: float = 0.0
    supported: list[str] = field(default_factory=list)
    contradicted: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    negated: list[str] = field(default_factory=list)
    consistent: list[str] = field(default_factory=list)
    typical_supported: list[str] = field(default_factory=list)
    typical_contradicted: list[str] = field(default_factory=list)
    typical_unverified: list[str] = field(default_factory=list)
    feature_score: float | None = None
    knowledge_score: float | None = None
    differentials: list[str] = field(default_factory=list)
    plausible_differentials: list[str] = field(default_factory=list)
    differential_score: float | None = None
    unknown_diseases: list[str] = field(default_factory=list)
    malignancy_in_play: bool = False
    referral_advised: bool = False
    safety_score: float = 1.0
    abstained: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Gold:
    """Facts about one gold label, computed once."""

    def __init__(self, kg: KnowledgeGraph, gold: str):
        self.id = gold
        self.features = set(kg.features(gold))
        self.lacks = set(kg.lacks(gold))
        for m in kg.members(gold):
            self.lacks &= set(kg.lacks(m)) if self.lacks else set()
        self.differentials = {d for d, _ in kg.differentials(gold)}
        for m in kg.members(gold):
            self.differentials |= {d for d, _ in kg.differentials(m)}
        self.parent = kg.parent(gold)
        self.ancestors = kg.ancestors(gold)
        self.depth = len(self.ancestors)
        self.malignancy = kg.malignancy(gold)
        self.site_features = {f for f in self.features if f.startswith("site:")}


class KGScorer:
    """Scores responses against gold labels with one knowledge graph; caches per gold label."""

    def __init__(self, kg: KnowledgeGraph | None = None, weights: ScoreWeights | None = None,
                 grounded: bool = True):
        self.kg = kg or load_graph()
        self.w = weights or ScoreWeights()
        self.grounded = grounded
        self._gold: dict[str, _Gold] = {}
        self._anc: dict[str, list[str]] = {}
        self._site_rel: dict[tuple[str, str], bool] = {}
        self._fuzzy_cache: dict[str, str | None] = {}
        self._words: dict[str, set[str]] = {}
        for name in self.kg._names:
            for w in name.split():
                if len(w) >= 4:
                    self._words.setdefault(w, set()).add(name)

    def gold(self, label: str) -> _Gold:
        g = self._gold.get(label)
        if g is None:
            node = label if self.kg.has(label) else self.kg.resolve(label)
            g = self._gold[label] = self._gold[node] = _Gold(self.kg, node)
        return g

    def ancestors(self, node: str) -> list[str]:
        a = self._anc.get(node)
        if a is None:
            a = self._anc[node] = self.kg.ancestors(node)
        return a

    # ------------------------------------------------------------------ diagnosis
    def diagnosis_credit(self, gold: _Gold, answered: str) -> tuple[str, float]:
        """exact/subtype/member 1.0; broader disease 0.8; sibling 0.5; same branch 0.3; same malignancy 0.15."""
        kg = self.kg
        if kg.covers(gold.id, answered):
            return ("exact" if answered == gold.id else "subtype_or_member"), 1.0
        anc = self.ancestors(answered)
        if answered in gold.ancestors and kg.kind(answered) == "disease":
            return "broader_disease", 0.8
        if gold.parent is not None and (gold.parent in anc[:1] or answered == gold.parent):
            return "sibling", 0.5
        lca = next((a for a in anc if a == gold.id or a in gold.ancestors), None)
        lca_depth = len(self.ancestors(lca)) if lca else 0
        same_malig = _group(kg.malignancy(answered)) == _group(gold.malignancy)
        if lca_depth >= 2:
            return "same_category", 0.3 if same_malig else 0.2
        if same_malig:
            return "same_malignancy_group", 0.15
        return "unrelated", 0.0

    # ------------------------------------------------------------------ main
    def score(self, response: Any, gold: str, site: str | None = None, fitzpatrick: int | None = None,
              facts: RecordFacts | str | dict | None = None) -> ScoreBreakdown:
        """Score ``response`` against ``gold`` (a node id or any resolvable label) and the record's ``site``,
        ``fitzpatrick`` and ``facts`` (symptoms present/absent; a ``RecordFacts`` or its JSON column); never
        raises on bad text."""
        g = self.gold(gold)
        facts = RecordFacts.from_json(facts) if self.grounded else None
        if not isinstance(response, str) or not response.strip():
            why = "empty response" if isinstance(response, str) or response is None else (
                f"not text ({type(response).__name__})")
            return ScoreBreakdown(score=0.0, gold=g.id, reason=why)
        out = ScoreBreakdown(score=0.0, gold=g.id)
        answers = ANSWER_RE.findall(response)
        out.has_answer_tag = bool(answers)
        mentions = self.kg.lexicon.find(response)
        diseases = [m for m in mentions if m.kind in ("disease", "category")]
        # -- the answered diagnosis
        if answers:
            out.answer_text = answers[-1].strip()
            in_answer = [m for m in self.kg.lexicon.find(out.answer_text) if m.kind in ("disease", "category")
                         and not m.negated]
            if in_answer:
                out.answered = _most_specific(self, in_answer)
            elif out.answer_text:
                if ABSTAIN_RE.search(out.answer_text):
                    out.abstained = True
                else:
                    out.answered = self._fuzzy(out.answer_text)
                    if out.answered is None:
                        out.unknown_diseases.append(out.answer_text[:80])
        else:
            out.answered = self._free_text_answer(response, diseases)
            out.abstained = out.answered is None and bool(ABSTAIN_RE.search(response))
        if out.answered is not None:
            out.diagnosis_relation, out.diagnosis_credit = self.diagnosis_credit(g, out.answered)
        elif out.abstained:
            out.diagnosis_relation = "abstained"
        self._feature_claims(out, g, mentions, response, site, facts)
        if fitzpatrick is not None:
            for match in FITZ_RE.finditer(response):
                v = match.group(1).lower()
                claimed = ROMAN.get(v) or int(v)
                node = f"fitzpatrick:{claimed}"
                (out.supported if abs(claimed - fitzpatrick) <= 1 else out.contradicted).append(node)
        for lst in ("supported", "contradicted", "unverified", "negated", "consistent", "typical_supported",
                    "typical_contradicted", "typical_unverified"):
            setattr(out, lst, list(dict.fromkeys(getattr(out, lst))))
        s, c, u = len(out.supported), len(out.contradicted), len(out.unverified)
        if self.grounded and s + c:  # only what the record (or the gold disease's absent features) decides
            out.feature_score = round(s / (s + self.w.contradicted_weight * c), 4)
        elif not self.grounded and s + c + u:
            out.feature_score = round((s + 0.5 * u) / (s + u + self.w.contradicted_weight * c), 4)
        ts, tc, tu = len(out.typical_supported), len(out.typical_contradicted), len(out.typical_unverified)
        if ts + tc + tu:
            out.knowledge_score = round((ts + 0.5 * tu) / (ts + tu + self.w.contradicted_weight * tc), 4)
        # -- differentials
        others = [m.node for m in diseases if m.node != out.answered and self.kg.kind(m.node) == "disease"]
        out.differentials = list(dict.fromkeys(others))
        answered_diffs = {d for d, _ in self.kg.differentials(out.answered)} if (
            out.answered and self.kg.kind(out.answered) == "disease") else set()
        for d in out.differentials:
            if (d in g.differentials or d in answered_diffs or self.kg.covers(g.id, d)
                    or (g.parent is not None and self.ancestors(d)[:1] == [g.parent])):
                out.plausible_differentials.append(d)
        if out.differentials:
            out.differential_score = round(len(out.plausible_differentials) / len(out.differentials), 4)
        # -- diseases the graph does not know
        out.unknown_diseases += self._unknown_diseases(response)
        out.unknown_diseases = list(dict.fromkeys(out.unknown_diseases))
        # -- safety
        in_play = {out.answered, *[m.node for m in diseases if not m.negated]} - {None}
        out.malignancy_in_play = g.malignancy in ("malignant", "premalignant") or any(
            self.kg.kind(n) == "disease" and self.kg.malignancy(n) in ("malignant", "premalignant")
            for n in in_play)
        out.referral_advised = bool(REFERRAL_RE.search(response))
        out.safety_score = 0.0 if out.malignancy_in_play and not out.referral_advised else 1.0
        out.score = self._combine(out)
        return out

    def __call__(self, response: Any, gold: str, **meta: Any) -> float:
        return self.score(response, gold, **meta).score

    # ------------------------------------------------------------------ feature claims
    def _feature_claims(self, out: ScoreBreakdown, g: _Gold, mentions: list[Mention], response: str,
                        site: str | None, facts: RecordFacts | None) -> None:
        """Sort each feature mention into the breakdown's lists: a claim in a sentence about another disease, or
        in a sentence stating class knowledge, is checked against the disease it is about; advice is skipped."""
        roles = sentence_roles(response) if self.grounded else {}
        subject: str | None = None
        sentence = -1
        for m in mentions:
            if m.sentence != sentence:
                sentence, subject = m.sentence, None
            if m.kind in ("disease", "category"):
                if not m.negated and self.kg.kind(m.node) == "disease":
                    subject = m.node
                continue
            if roles.get(sentence) == "advice":  # "see a doctor if it bleeds" claims nothing about the image
                continue
            knowledge = roles.get(sentence) == "typical"
            decided = facts.verdict(m.node, m.negated) if facts and not knowledge else None
            if decided is not None:
                getattr(out, decided).append(m.node)
                continue
            if m.negated:
                out.negated.append(m.node)
                continue
            other = subject is not None and subject not in (g.id, out.answered) and not self.kg.covers(g.id, subject)
            if knowledge or (other and self.grounded):
                verdict = self._feature_verdict(self.gold(subject or out.answered or g.id), m, None)
                getattr(out, f"typical_{verdict}").append(m.node)
                continue
            verdict = self._feature_verdict(self.gold(subject) if other else g, m, None if other else site)
            if verdict == "supported" and self.grounded and not self._record_decides(m, site):
                verdict = "consistent"
            getattr(out, verdict).append(m.node)

    @staticmethod
    def _record_decides(m: Mention, site: str | None) -> bool:
        """Whether the record itself decided a claim (the site against a known site)."""
        return m.kind == "site" and site is not None

    # ------------------------------------------------------------------ helpers
    def _combine(self, out: ScoreBreakdown) -> float:
        parts = [(self.w.diagnosis, out.diagnosis_credit), (self.w.safety, out.safety_score)]
        if out.feature_score is not None:
            parts.append((self.w.features, out.feature_score))
        if out.differential_score is not None:
            parts.append((self.w.differentials, out.differential_score))
        total = sum(w for w, _ in parts)
        value = sum(w * v for w, v in parts) / total
        if out.answered is None:  # no diagnosis at all: the rest cannot carry the answer
            value *= 0.5
        value -= self.w.knowledge_error_penalty * knowledge_error_rate(out)
        value -= self.w.unknown_disease_penalty * min(len(out.unknown_diseases), 2)
        return round(min(1.0, max(0.0, value)), 4)

    def _feature_verdict(self, g: _Gold, m: Mention, site: str | None) -> str:
        if m.kind == "site":
            if site is not None:
                meta = site if site.startswith("site:") else feature_node("site", site)
                return "supported" if self._sites_related(m.node, meta) else "contradicted"
            if m.node in g.features or any(self._sites_related(m.node, s) for s in g.site_features):
                return "supported"
            return "unverified"
        if m.node in g.features:
            return "supported"
        if m.node in g.lacks:
            return "contradicted"
        return "unverified"

    def _sites_related(self, a: str, b: str) -> bool:
        key = (a, b)
        r = self._site_rel.get(key)
        if r is None:
            r = self._site_rel[key] = self.kg.sites_related(a, b)
        return r

    def _free_text_answer(self, text: str, diseases: list[Mention]) -> str | None:
        """The diagnosis a free-text answer commits to: the first un-negated disease after a diagnosis cue, else
        the first un-negated disease mentioned."""
        candidates = [m for m in diseases if not m.negated and self.kg.kind(m.node) == "disease"]
        if not candidates:
            return None
        toks = tokens(text)
        cue_positions = [i for i in range(len(toks)) if toks[i] in ("likely", "diagnosis", "consistent", "is")]
        for m in candidates:
            if any(0 < m.start - p <= 4 for p in cue_positions):
                return m.node
        return candidates[0].node

    def _fuzzy(self, text: str) -> str | None:
        """A disease/category for a near-exact name (spelling slips), else None. Cached; compares only names that
        share a word with ``text``, so an unknown phrase costs microseconds, not a scan of every name."""
        key = normalise(text)
        if key in self._fuzzy_cache:
            return self._fuzzy_cache[key]
        hits = self.kg._names.get(key)
        found = hits[0] if hits else None
        if found is None:
            pool = set().union(*(self._words.get(w, set()) for w in key.split() if len(w) >= 4)) if key else set()
            close = difflib.get_close_matches(key, sorted(pool), n=1, cutoff=0.88)
            found = self.kg._names[close[0]][0] if close else None
        if len(self._fuzzy_cache) > 100_000:
            self._fuzzy_cache.clear()
        self._fuzzy_cache[key] = found
        return found

    def _unknown_diseases(self, text: str) -> list[str]:
        """Phrases named as a diagnosis (after cues such as "consistent with") that the graph cannot resolve."""
        found = []
        low = text.lower()
        low = ANSWER_RE.sub(" ", THINK_RE.sub(lambda m: m.group(1), low))
        for cue in DISEASE_CUES:
            start = 0
            while (i := low.find(cue, start)) >= 0:
                start = i + len(cue)
                tail = tokens(low[start:start + 120])
                phrase: list[str] = []
                for t in tail:
                    if t in CLAUSE_BREAKS or t in ("and", "or", "with", "than", "because", "given", "as"):
                        break
                    phrase.append(t)
                items = [w for w in phrase if w not in ("a", "an", "the", "of", "to", "be", "is", "are", "was")]
                if not items or len(items) > 5 or set(items) & GENERIC_WORDS:
                    continue
                cand = " ".join(items)
                if self.kg.lexicon.find(cand):
                    continue
                if self._fuzzy(cand) is None:
                    found.append(cand)
        return found


def knowledge_error_rate(out: ScoreBreakdown) -> float:
    """The share of a response's class-knowledge claims that contradict the disease they are about."""
    n = len(out.typical_supported) + len(out.typical_contradicted) + len(out.typical_unverified)
    return len(out.typical_contradicted) / n if n else 0.0


def _group(malignancy: str | None) -> str:
    return "benign" if malignancy in (None, "benign") else "malignant"


def _most_specific(scorer: KGScorer, mentions: list[Mention]) -> str:
    """Among diseases named in an answer, the deepest in the taxonomy (``melanoma in situ`` over ``melanoma``)."""
    nodes = list(dict.fromkeys(m.node for m in mentions))
    diseases = [n for n in nodes if scorer.kg.kind(n) == "disease"] or nodes
    return max(diseases, key=lambda n: (len(scorer.ancestors(n)), -nodes.index(n)))


_DEFAULT: KGScorer | None = None


def score(response: Any, gold: str, site: str | None = None, fitzpatrick: int | None = None,
          facts: RecordFacts | str | dict | None = None) -> ScoreBreakdown:
    """Score with the default graph (built once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = KGScorer()
    return _DEFAULT.score(response, gold, site=site, fitzpatrick=fitzpatrick, facts=facts)
