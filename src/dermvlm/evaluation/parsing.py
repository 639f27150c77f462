"""Answer parsing: strict (the ``<answer>`` tag, an option letter) first, lenient (graph synonyms, option names,
a leading yes/no) second; anything else is counted as unparsable, never silently replaced by a guess."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dermvlm.knowledge import KnowledgeGraph
from dermvlm.knowledge.lexicon import normalise
from dermvlm.knowledge.scorer import ABSTAIN_RE

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.S | re.I)
FORMAT_RE = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.S)
LETTER_ONLY_RE = re.compile(r"^\s*\(?([A-J])\)?(?:[.):]|\s|$)")
LETTER_ANYWHERE_RE = re.compile(r"\b(?:answer|option)(?: is)?[:\s]+\(?([A-J])\b", re.I)
YES_NO_RE = re.compile(r"^\W*(yes|no)\b", re.I)


@dataclass
class Parsed:
    """What a response answered: ``prediction`` (a letter, yes/no, a graph node, or ``abstain``) and how it was read."""

    prediction: str | None
    mode: str  # strict | lenient | unparsable
    reason: str = ""
    format_ok: bool = False
    differential: list[str] = field(default_factory=list)


def _diseases(kg: KnowledgeGraph, text: str) -> list[str]:
    return list(dict.fromkeys(m.node for m in kg.lexicon.find(text)
                              if m.kind in ("disease", "category") and not m.negated))


def _letter(text: str, n_options: int) -> tuple[str | None, bool]:
    letters = re.findall(r"(?:^|[\s(])([A-J])(?=[.):\s]|$)", text.strip())
    letters = [x for x in dict.fromkeys(letters) if "ABCDEFGHIJ".index(x) < n_options]
    if len(letters) > 1:
        return None, True
    return (letters[0] if letters else None), False


def parse(text: Any, item: dict[str, Any], kg: KnowledgeGraph) -> Parsed:
    """Parse one response for one item (types ``mcq``, ``open``, ``open_text``, ``yes_no``, ``attribute:*``,
    ``abstention``)."""
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, "unparsable", "empty response")
    kind = item["type"]
    answers = ANSWER_RE.findall(text)
    tag = answers[-1].strip() if answers else None
    parsed = Parsed(None, "unparsable", format_ok=bool(FORMAT_RE.match(text)))
    think = THINK_RE.search(text)
    parsed.differential = _diseases(kg, think.group(1)) if think else []
    if len({a.strip().lower() for a in answers}) > 1:
        parsed.reason = "multiple answers"
        return parsed
    if kind == "abstention" or ABSTAIN_RE.search(tag or text):
        if ABSTAIN_RE.search(tag or text):
            parsed.prediction, parsed.mode = "abstain", "strict" if tag else "lenient"
            return parsed
        named = _diseases(kg, tag or text)
        parsed.prediction, parsed.mode = (named[0], "lenient") if named else (None, "unparsable")
        parsed.reason = "" if named else "neither an abstention nor a diagnosis"
        return parsed
    if kind == "mcq":
        options = item.get("options") or []
        if tag is not None:
            letter, multiple = _letter(tag, len(options))
            if multiple:
                parsed.reason = "multiple answers"
                return parsed
            if letter:
                parsed.prediction, parsed.mode = letter, "strict"
                return parsed
        m = LETTER_ANYWHERE_RE.search(text)
        if m and "ABCDEFGHIJ".index(m.group(1).upper()) < len(options):
            parsed.prediction, parsed.mode = m.group(1).upper(), "lenient"
            return parsed
        scope = normalise(tag if tag is not None else text)
        named = [i for i, o in enumerate(options) if normalise(o) and f" {normalise(o)} " in f" {scope} "]
        if len(named) == 1:
            parsed.prediction, parsed.mode = "ABCDEFGHIJ"[named[0]], "lenient"
        else:
            parsed.reason = "several options named" if named else "no option letter or name"
        return parsed
    if kind == "yes_no":
        m = YES_NO_RE.match(tag if tag is not None else text)
        if m:
            parsed.prediction, parsed.mode = m.group(1).lower(), "strict" if tag is not None else "lenient"
        else:
            parsed.reason = "no yes/no"
        return parsed
    if kind == "open_text":  # a free-text benchmark answer: the answer tag, else the whole response
        parsed.prediction = (tag if tag is not None else THINK_RE.sub("", text)).strip()
        parsed.mode = "strict" if tag is not None else "lenient"
        return parsed
    if kind.startswith("attribute"):
        if tag is None:
            parsed.reason = "no answer tag"
            return parsed
        parsed.prediction, parsed.mode = tag, "strict"
        return parsed
    # open diagnosis
    if tag is not None:
        named = _diseases(kg, tag)
        if len(named) > 1 and not all(n in kg.ancestors(named[-1]) or n == named[-1] for n in named):
            parsed.reason = "multiple answers"
            return parsed
        if named:
            parsed.prediction, parsed.mode = named[-1] if len(named) > 1 else named[0], "strict"
            return parsed
    named = _diseases(kg, text)
    if named:
        parsed.prediction, parsed.mode = _committed(kg, text, named), "lenient"
    else:
        parsed.reason = "no diagnosis the graph knows"
    return parsed


def _committed(kg: KnowledgeGraph, text: str, named: list[str]) -> str:
    """The diagnosis free text commits to: the one after "most likely"/"diagnosis"/"consistent with", else the first."""
    low = text.lower()
    best, pos = named[0], len(low) + 1
    for cue in ("most likely", "diagnosis is", "diagnosis:", "consistent with", "this is"):
        i = low.find(cue)
        if i < 0:
            continue
        after = _diseases(kg, text[i:i + 160])
        if after and i < pos:
            best, pos = after[0], i
    return best
