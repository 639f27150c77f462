"""Grounding: what a record confirms about *its* image, and which claims of a reasoning text are about this image
("here: ...") and which recite what is typical of a disease ("typical of melanoma: ...").

A reasoning trace that recites the gold class's textbook features says nothing about the image in front of it;
scoring those claims as factual pays the model for naming the label twice. ``RecordFacts`` holds the facts a
dataset records per image (site, Fitzpatrick type, reported symptoms present *and* absent, elevation), so a claim
about the image can be checked against the record; ``sentence_role`` tells class knowledge from image
claims by the hedges dermatologists use for it ("typical of", "usually", "classically", ...), and advice
("... if it bleeds") from both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from dermvlm.knowledge.lexicon import tokens

# PAD-UFES-20's clinical fields → the graph's feature nodes.
PAD_UFES_FIELDS = {"itch": "symptom:itch", "grew": "symptom:growth", "hurt": "symptom:pain",
                   "changed": "symptom:change", "bleed": "symptom:bleeding", "elevation": "morphology:elevated"}
TYPICAL_CUES = {("typical",), ("typically",), ("usually",), ("classically",), ("characteristic",),
                ("characteristically",), ("expected",), ("tends",), ("tend",), ("often",), ("commonly",),
                ("generally",), ("look", "for"), ("is", "known"), ("are", "known")}
ADVICE_CUES = {("if",), ("unless",), ("in", "case"), ("watch", "for"), ("should", "it")}
HERE_CUES = {("here",), ("this", "lesion"), ("this", "image"), ("the", "record"), ("reported",), ("reports",)}


@dataclass(frozen=True)
class RecordFacts:
    """What a record says about its image: feature nodes it confirms (``present``) and denies (``absent``)."""

    present: frozenset[str] = field(default_factory=frozenset)
    absent: frozenset[str] = field(default_factory=frozenset)

    def verdict(self, node: str, negated: bool) -> str | None:
        """``supported``/``contradicted`` for a claim (``negated``: "no itching") the record decides, else None."""
        if node in self.present:
            return "contradicted" if negated else "supported"
        if node in self.absent:
            return "supported" if negated else "contradicted"
        return None

    def __bool__(self) -> bool:
        return bool(self.present or self.absent)

    def to_json(self) -> str:
        return json.dumps({"present": sorted(self.present), "absent": sorted(self.absent)}) if self else ""

    @classmethod
    def from_json(cls, value: Any) -> RecordFacts | None:
        """From a dataset column: the JSON string ``to_json`` wrote, a dict, or empty/None (no facts)."""
        if isinstance(value, RecordFacts) or not value:
            return value or None
        data = json.loads(value) if isinstance(value, str) else value
        return cls(frozenset(data.get("present", ())), frozenset(data.get("absent", ())))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RecordFacts:
        """From a record's ``meta``: ``symptoms`` / ``symptoms_absent`` as the adapters write them."""
        def nodes(names: Any) -> frozenset[str]:
            return frozenset(PAD_UFES_FIELDS.get(n, n) for n in names or () if n in PAD_UFES_FIELDS or ":" in n)
        return cls(nodes(meta.get("symptoms")), nodes(meta.get("symptoms_absent")))


def sentence_role(sentence: str) -> str | None:
    """``advice`` for a conditional ("see a doctor if it bleeds": no claim about the image), ``typical`` for class
    knowledge ("typical of X: ...", "X usually shows ..."), None for a finding about this image; a sentence that
    says "here" or "reported" is a finding whatever else it says."""
    toks = tokens(sentence)
    cues = {(t,) for t in toks} | set(pairwise(toks))
    if cues & HERE_CUES:
        return None
    if cues & ADVICE_CUES:
        return "advice"
    return "typical" if cues & TYPICAL_CUES else None


def sentence_roles(text: str) -> dict[int, str]:
    """The role of each sentence of ``text`` (numbered as the lexicon counts them) that is not a finding."""
    out, sentence, current = {}, 0, []
    for tok in [*tokens(text), "."]:
        if tok in (".", ";", "!", "?"):
            role = sentence_role(" ".join(current)) if current else None
            if role:
                out[sentence] = role
            sentence, current = sentence + 1, []
        else:
            current.append(tok)
    return out
