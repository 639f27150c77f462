"""What a person should see of one model answer: the reasoning, the final answer, a differential, and referral
advice whenever a malignancy is plausible; an abstention shown as such; an answer without its ``</answer>`` marked
as cut off, and where. The graph supplies what the model left out (its differentials of the answered diagnosis, the
referral level), marked as coming from the graph."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dermvlm.evaluation.parsing import ANSWER_RE, THINK_RE, parse
from dermvlm.knowledge import KnowledgeGraph
from dermvlm.recipes.text import DISCLAIMER, REFERRAL, referral_level

RESEARCH_NOTICE = (f"**Research use only.** {DISCLAIMER} Answers come from a model that can be wrong; they are not "
                   "advice about a person's health. See a doctor about any skin change that worries you.")
MALIGNANT = ("malignant", "premalignant")


@dataclass
class Reading:
    """One answer, read for a person (``answer_card.py`` shows it)."""

    reasoning: str
    answer: str
    diagnosis: str | None = None  # graph node the answer commits to
    diagnosis_name: str | None = None
    read_from: str = "answer"  # answer | unfinished answer | reasoning: where the diagnosis was read
    abstained: bool = False
    differential: list[str] = field(default_factory=list)  # names
    differential_from_graph: bool = False
    malignancy_plausible: bool = False
    referral: str = ""
    cut_off: str = ""  # where the text stopped before its </answer>: "reasoning" or "answer" ("" when complete)


OPEN_ANSWER_RE = re.compile(r"<answer>", re.I)
OPEN_THINK_RE = re.compile(r"<think>", re.I)


def split_answer(text: str, truncated: bool = False) -> tuple[str, str, str]:
    """(reasoning, answer, cut off): ``<think>`` and ``<answer>`` when present, free text is all answer. Text that
    uses the tags but has no ``</answer>`` is cut off: inside its ``<think>`` (all reasoning, no answer) or in its
    answer (the answer so far); free text is cut off only when the server says it hit the token limit
    (``truncated``)."""
    text = text or ""
    think = THINK_RE.search(text)
    reasoning = think.group(1).strip() if think else ""
    answers = ANSWER_RE.findall(text)
    if answers:
        return reasoning, answers[-1].strip(), ""
    opened = list(OPEN_ANSWER_RE.finditer(text))
    if opened:
        before = text[:opened[-1].start()]
        return reasoning or OPEN_THINK_RE.sub("", before).strip(), text[opened[-1].end():].strip(), "answer"
    if think:
        return reasoning, text[think.end():].strip(), "answer"
    thinking = OPEN_THINK_RE.search(text)
    if thinking:
        return text[thinking.end():].strip(), "", "reasoning"
    return "", text.strip(), "answer" if truncated else ""


def read_answer(text: str, kg: KnowledgeGraph, truncated: bool = False) -> Reading:
    """Split reasoning and answer, read the diagnosis as the evaluation does (from the answer so far when it was
    cut off in its answer, from the reasoning when it has none), and add the differential and the referral advice
    the graph gives when a malignancy is plausible. ``truncated``: the server stopped at the token limit."""
    reasoning, answer, cut = split_answer(text, truncated)
    unfinished = cut == "answer" and answer
    parsed = parse(answer if unfinished else text, {"type": "open"}, kg)
    read_from = "unfinished answer" if unfinished else "reasoning" if cut else "answer"
    reading = Reading(reasoning=reasoning, answer=answer, read_from=read_from, cut_off=cut)
    if parsed.prediction == "abstain":
        reading.abstained = True
        return reading
    dx = parsed.prediction
    named = [d for d in dict.fromkeys(m.node for m in kg.lexicon.find(reasoning)
                                      if m.kind == "disease" and not m.negated) if d != dx]
    if dx:
        reading.diagnosis, reading.diagnosis_name = dx, kg.name(dx)
        if not named:
            named = [d for d, _ in kg.differentials(dx)][:3]
            reading.differential_from_graph = bool(named)
    reading.differential = [kg.name(d) for d in named]
    in_play = [d for d in ([dx] if dx else []) + named if kg.malignancy(d) in MALIGNANT]
    reading.malignancy_plausible = bool(in_play)
    if dx and kg.malignancy(dx) in MALIGNANT:
        reading.referral = REFERRAL[referral_level(kg, dx)]
    elif in_play:
        reading.referral = REFERRAL["differential"].format(name=kg.name(in_play[0]))
    elif dx:
        reading.referral = REFERRAL[referral_level(kg, dx)]
    return reading
