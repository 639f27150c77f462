"""Sentences the recipes write, from the record and the knowledge graph: findings, differentials, advice.

A reasoning trace keeps two kinds of statement apart (``knowledge.grounding``): what the *record* supports for this
image, marked "Here:" (modality, site, Fitzpatrick type, age and sex, reported symptoms present and absent), and
what is *typical* of a diagnosis per the graph, marked "Typical of X:" or hedged ("usually shows"). Image facts
are never invented, and class knowledge is never stated as a finding. Every phrasing choice goes through the
caller's seeded ``random.Random``.
"""

from __future__ import annotations

import random
import re

from dermvlm.datasets.records import Record
from dermvlm.knowledge import KnowledgeGraph

SYSTEM_PROMPT = (
    "You are DermIQ, a dermatology research assistant. Look at the image and reason step by step inside "
    "<think>...</think>: morphology, colour, border, distribution and site, then a differential diagnosis. Give "
    "the single most likely diagnosis inside <answer>...</answer>. When a malignancy is plausible, advise seeing a "
    "dermatologist. You are a research tool, not a medical diagnosis."
)
MODALITY = {"isic": "dermoscopic image", "dermamnist": "dermoscopic image", "ham10000": "dermoscopic image",
            "pad_ufes_20": "clinical photograph", "fitzpatrick17k": "clinical photograph",
            "ddi": "clinical photograph", "sample": "image"}
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
OPEN_QUESTIONS = (
    "What is the most likely diagnosis of this skin lesion?",
    "What skin condition is shown in this image?",
    "Which diagnosis best explains this lesion?",
    "Please identify the skin condition in this image.",
    "What does this skin lesion look like to you? Give the most likely diagnosis.",
)
MCQ_QUESTIONS = (
    "Which diagnosis best fits this lesion?",
    "Which of the following is the most likely diagnosis?",
    "Choose the most likely diagnosis for the lesion in the image.",
)
TYPICAL = (
    "Typical of {name}: {feats}.",
    "{Name} typically shows {feats}.",
    "Typical findings of {name} are {feats}.",
    "Features to look for in {name}: {feats}.",
)
SYMPTOM_WORDS = {"itch": "itching", "grew": "growth", "hurt": "pain", "changed": "change", "bleed": "bleeding",
                 "elevation": "elevation"}
WARNING_SYMPTOMS = ("grew", "changed", "bleed")
CONCLUDE = (
    "Overall the findings are most consistent with {name}.",
    "Taken together, this is most likely {name}.",
    "The most likely diagnosis is {name}.",
)
PATIENT_OPENERS = (
    "I have this spot{site} and I'm not sure what it is. Can you help?",
    "This appeared{site} a while ago. What could it be?",
    "My doctor is busy; can you tell me what this{site} might be?",
    "Should I be worried about this{site}?",
)
FOLLOW_UPS = ("Is it serious? What should I do next?", "What are the next steps?", "Do I need to see someone?")
REFERRAL = {
    "urgent": "Because a malignancy is plausible, please see a dermatologist urgently; a biopsy may be needed.",
    "soon": "Please arrange to see a dermatologist soon for an examination.",
    "routine": "If it changes, bleeds or does not settle, see a doctor or dermatologist.",
    "differential": "Because {name} is in the differential, please have it checked by a dermatologist, sooner if it "
                    "changes, bleeds or grows.",
}
DISCLAIMER = "This is a research tool, not a medical diagnosis."


def join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def modality(record: Record) -> str:
    """What the image is: the record's own ``modality`` (a CSV source's option), else its dataset's, else
    "image"."""
    src = record.meta.get("source_dataset", record.dataset)
    return record.meta.get("modality") or MODALITY.get(src, "image")


def article(phrase: str) -> str:
    """"a" or "an" before ``phrase``, by how it is said ("an image", "a uniform", "an 8-year-old", "an 18-")."""
    w = phrase.strip().lower()
    number = re.match(r"\d+", w)
    if number:
        n = number.group()
        return "an" if n.startswith("8") or (n[:2] in ("11", "18") and len(n) in (2, 5)) else "a"
    if w.startswith(("uni", "use", "usu", "uro", "eu", "one", "once")):
        return "a"
    if w.startswith(("hour", "honest", "honour", "heir")):
        return "an"
    return "an" if w[:1] in tuple("aeiou") else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def site_phrase(kg: KnowledgeGraph, record: Record) -> str:
    return f" on the {kg.name('site:' + record.site)}" if record.site else ""


def patient_phrase(record: Record) -> str:
    """``, in a 55-year-old woman`` from the record's age and sex (either may be missing)."""
    age = record.meta.get("age") or record.meta.get("age_approx")
    sex = str(record.meta.get("sex") or record.meta.get("gender") or "").lower()
    who = {"female": "woman", "male": "man"}.get(sex, "patient" if age else "")
    try:
        years = f"{int(float(age))}-year-old " if age not in (None, "") else ""
    except ValueError:
        years = ""
    return f", in {with_article(years + who)}" if who else ""


def metadata_sentence(kg: KnowledgeGraph, record: Record) -> str:
    """"Here: ..." — what the record confirms about this image (modality, site, skin type, patient, symptoms)."""
    parts = [f"Here: {with_article(modality(record))} of a skin lesion{site_phrase(kg, record)}"]
    if record.fitzpatrick:
        parts.append(f"in Fitzpatrick type {ROMAN[record.fitzpatrick]} skin")
    sentence = " ".join(parts) + patient_phrase(record) + "."
    present = [SYMPTOM_WORDS.get(s, s) for s in record.meta.get("symptoms") or ()]
    absent = [SYMPTOM_WORDS.get(s, s) for s in record.meta.get("symptoms_absent") or ()]
    if present:
        sentence += f" Reported here: {join(present)}."
    if absent:
        sentence += f" The record reports {join(['no ' + a for a in absent])}."  # one "no" each: negation scope
    warnings = [SYMPTOM_WORDS[s] for s in WARNING_SYMPTOMS if s in (record.meta.get("symptoms") or ())]
    if warnings:
        sentence += f" The reported {join(warnings)} here is a warning sign that calls for examination."
    return sentence


CAPTION_QUESTIONS = ("Describe the image briefly.", "What does this image show?", "Caption this image.")


def typical_features(kg: KnowledgeGraph, label: str, rng: random.Random, dermoscopic: bool, n: int = 4
                     ) -> list[str]:
    """A few typical features of ``label`` as phrases (morphology first), sampled reproducibly."""
    picks: list[str] = []
    order = [("morphology", 2), ("colour", 1), ("border", 1), ("distribution", 1)]
    if dermoscopic:
        order.insert(1, ("dermoscopic", 2))
    for kind, k in order:
        feats = kg.features(label, kind)
        if feats:
            picks += [kg.name(f) for f in rng.sample(feats, min(k, len(feats)))]
    return picks[:n]


def contrast(kg: KnowledgeGraph, gold: str, other: str) -> str:
    """Why ``other`` is less likely than ``gold``: a feature of the same kind that differs, else any difference."""
    for kind in ("morphology", "dermoscopic", "colour", "border", "distribution", "site"):
        theirs = sorted(set(kg.features(other, kind)) - set(kg.features(gold, kind)))
        ours = sorted(set(kg.features(gold, kind)) - set(kg.features(other, kind)))
        if theirs and ours:
            return (f"{cap(kg.name(other))} is considered, but it usually shows {kg.name(theirs[0])} rather than "
                    f"{kg.name(ours[0])}.")
    theirs = sorted(set(kg.features(other)) - set(kg.features(gold)))
    if theirs:
        return f"{cap(kg.name(other))} is considered, but it usually shows {kg.name(theirs[0])}."
    return f"{cap(kg.name(other))} is considered, but the overall pattern fits {kg.name(gold)} better."


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def is_dermoscopic(record: Record) -> bool:
    return modality(record) == "dermoscopic image"


def referral_level(kg: KnowledgeGraph, label: str) -> str:
    """urgent when a malignancy is plausible, else the curated referral of the disease (routine by default)."""
    if kg.malignancy(label) in ("malignant", "premalignant"):
        return "urgent" if kg.malignancy(label) == "malignant" else "soon"
    return kg.node(label).get("referral") or "routine"


def reasoning(kg: KnowledgeGraph, record: Record, rng: random.Random, n_differentials: int = 2,
              label: str | None = None) -> str:
    """The ``<think>`` body: what the record shows here → what is typical of the diagnosis → differential with
    reasons (class knowledge, hedged) → conclusion and referral."""
    label = label or record.label
    feats = typical_features(kg, label, rng, is_dermoscopic(record))
    parts = [metadata_sentence(kg, record)]
    if feats:
        parts.append(rng.choice(TYPICAL).format(name=kg.name(label), Name=cap(kg.name(label)), feats=join(feats)))
    diffs = [d for d, _ in kg.differentials(label)][:n_differentials]
    if diffs:
        parts.append(f"Differential diagnosis: {join([kg.name(d) for d in diffs])}.")
        parts += [contrast(kg, label, d) for d in diffs]
    parts.append(rng.choice(CONCLUDE).format(name=kg.name(label)))
    if kg.malignancy(label) in ("malignant", "premalignant"):
        parts.append(REFERRAL[referral_level(kg, label)])
    else:
        risky = [d for d in diffs if kg.malignancy(d) in ("malignant", "premalignant")]
        if risky:
            parts.append(REFERRAL["differential"].format(name=kg.name(risky[0])))
    return " ".join(parts)


def dermiq_answer(kg: KnowledgeGraph, record: Record, rng: random.Random, n_differentials: int = 2) -> str:
    """``<think>…</think><answer>…</answer>`` for the record's label."""
    return f"<think>{reasoning(kg, record, rng, n_differentials)}</think><answer>{kg.name(record.label)}</answer>"
