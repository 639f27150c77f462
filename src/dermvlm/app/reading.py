"""What a person should see of one model answer: the reasoning, the final answer, a differential, and referral
advice whenever a malignancy is plausible; an abstention shown as such. The graph supplies what the model left out
(its differentials of the answered diagnosis, the referral level), marked as coming from the graph."""

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
    """One answer, read for a person."""

    reasoning: str
    answer: str
    diagnosis: str | None = None  # graph node the answer commits to
    diagnosis_name: str | None = None
    abstained: bool = False
    differential: list[str] = field(default_factory=list)  # names
    differential_from_graph: bool = False
    malignancy_plausible: bool = False
    referral: str = ""
    cut_off: bool = False  # the answer ended inside its reasoning (max tokens)

    def markdown(self) -> str:
        """The answer panel: final answer, differential, referral (the reasoning is shown apart, collapsible)."""
        if self.abstained:
            lines = [f"**The model abstained:** {self.answer or self.reasoning}"]
        elif self.cut_off:
            lines = ["**The answer was cut off inside its reasoning** (raise `--max-tokens`)."]
            if self.diagnosis_name:
                lines.append(f"**Most likely (as read from the reasoning):** {self.diagnosis_name}")
        elif self.diagnosis_name:
            lines = [f"**Answer:** {self.answer}", f"**Most likely (as read from the answer):** {self.diagnosis_name}"]
        else:
            lines = [f"**Answer:** {self.answer or '(the model returned an empty answer)'}",
                     "**No diagnosis the knowledge graph knows could be read from this answer.**"]
        if self.differential:
            source = " (from the knowledge graph; the model named none)" if self.differential_from_graph else ""
            lines.append(f"**Differential{source}:** {', '.join(self.differential)}")
        if self.referral:
            lines.append(f"**Referral advice:** {self.referral}")
        return "\n\n".join(lines)


def split_answer(text: str) -> tuple[str, str, bool]:
    """(reasoning, answer, cut off): ``<think>`` and ``<answer>`` when present (free text is all answer); an answer
    cut off inside its ``<think>`` is all reasoning and no answer."""
    text = text or ""
    think = THINK_RE.search(text)
    answers = ANSWER_RE.findall(text)
    if think:
        reasoning = think.group(1).strip()
        answer = answers[-1].strip() if answers else text[think.end():].strip()
        return reasoning, answer, False
    opened = re.search(r"<think>", text, re.I)
    if opened and not answers:
        return text[opened.end():].strip(), "", True
    return "", answers[-1].strip() if answers else text.strip(), False


def read_answer(text: str, kg: KnowledgeGraph) -> Reading:
    """Split reasoning and answer, read the diagnosis as the evaluation does, and add the differential and the
    referral advice the graph gives when a malignancy is plausible."""
    reasoning, answer, cut = split_answer(text)
    parsed = parse(text, {"type": "open"}, kg)
    reading = Reading(reasoning=reasoning, answer=answer, cut_off=cut)
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
