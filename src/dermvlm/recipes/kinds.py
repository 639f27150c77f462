"""One builder per recipe kind: a canonical record (+ the graph) → rows in TRL's native formats.

SFT kinds (``mcq``, ``open_diagnosis``, ``yes_no``, ``attribute``, ``reasoning_trace``, ``conversation``) give
``messages``; ``grpo_prompt`` gives ``prompt`` + gold columns; ``preference_pair`` gives ``prompt`` + ``chosen`` +
``rejected``; ``eval_item`` gives ``question`` + ``options`` + ``answer`` + ``type``. Every choice is drawn from
the builder's seeded generator, so a recipe and a seed fix the output.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.datasets.adapters.common import DatasetError, fitzpatrick_group
from dermvlm.datasets.image_facts import image_facts
from dermvlm.datasets.records import Record
from dermvlm.knowledge import KnowledgeGraph
from dermvlm.knowledge.grounding import RecordFacts
from dermvlm.recipes import text

LETTERS = "ABCDEFGHIJ"
FAKE_DISEASES = (
    "glomerular dermatosis of hartwell", "reticulated keratoderma of varn", "acquired pellucid naevomatosis",
    "eruptive lichen of corwin", "cutaneous ferroxanthosis", "dorsal melanocytic plexitis",
)


@dataclass
class Context:
    """What builders share: the graph, the labels present in the build, counters for balanced letters."""

    kg: KnowledgeGraph
    labels: list[str]
    label_counts: Counter
    system_prompt: str | None = None
    counters: Counter = field(default_factory=Counter)

    def next(self, key: str) -> int:
        n = self.counters[key]
        self.counters[key] += 1
        return n


# ------------------------------------------------------------------ message helpers


def user(question: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}


def user_text(question: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": question}]}


def assistant(answer: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


def with_system(ctx: Context, messages: list[dict]) -> list[dict]:
    if ctx.system_prompt:
        return [{"role": "system", "content": [{"type": "text", "text": ctx.system_prompt}]}, *messages]
    return messages


def sft_row(ctx: Context, record: Record, kind: str, messages: list[dict], qtype: str) -> dict[str, Any]:
    return {"messages": with_system(ctx, messages), "label": record.label, "kind": kind, "question_type": qtype}


# ------------------------------------------------------------------ options


def distractors(ctx: Context, label: str, k: int, rng: random.Random, pool: str) -> list[str]:
    """``k`` wrong options for ``label``: the graph's hard differentials (weighted by confusability), or the other
    labels of this build ranked the same way (``pool: dataset``). Fails clearly when there are too few."""
    kg = ctx.kg

    def ok(c: str) -> bool:
        return c != label and not kg.covers(label, c) and not kg.covers(c, label)

    if pool == "dataset":
        weights = dict(kg.differentials(label))
        cands = {c: weights.get(c, 0.1 + 0.4 / (1 + kg.taxonomy_distance(label, c))) for c in ctx.labels if ok(c)}
    else:
        cands = {d: w for d, w in kg.differentials(label) if ok(d)}
        parent = kg.parent(label)
        for sib in kg.children(parent) if parent else []:
            if ok(sib) and kg.kind(sib) == "disease" and sib not in cands:
                cands[sib] = 0.2
    if len(cands) < k:
        raise DatasetError(
            f"{k + 1} options asked, but '{label}' has only {len(cands)} possible distractor(s) in the "
            f"{'labels of this build' if pool == 'dataset' else 'graph (differentials and siblings)'}: "
            f"lower 'options' or use distractors: {'graph' if pool == 'dataset' else 'dataset'}")
    chosen: list[str] = []
    items = sorted(cands.items())
    while len(chosen) < k:
        total = sum(w for c, w in items if c not in chosen)
        x = rng.random() * total
        for c, w in items:
            if c in chosen:
                continue
            x -= w
            if x <= 0:
                chosen.append(c)
                break
        else:
            chosen.append(next(c for c, _ in items if c not in chosen))
    return chosen


def options_for(ctx: Context, label: str, k: int, rng: random.Random, pool: str, key: str
                ) -> tuple[list[str], str]:
    """``k`` option names with the right one at a balanced position; returns (options, correct letter)."""
    wrong = distractors(ctx, label, k - 1, rng, pool)
    rng.shuffle(wrong)
    pos = ctx.next(key) % k
    names = [ctx.kg.name(w) for w in wrong]
    names.insert(pos, ctx.kg.name(label))
    return names, LETTERS[pos]


def format_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


# ------------------------------------------------------------------ SFT kinds


def mcq(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    opts, letter = options_for(ctx, record.label, spec.options, rng, spec.distractors, f"mcq-{record.split}")
    q = rng.choice(spec.templates or text.MCQ_QUESTIONS)
    question = f"{q}\n{format_options(opts)}\nAnswer with the letter of the best option."
    think = f"<think>{text.reasoning(ctx.kg, record, rng, 2)}</think>" if spec.with_reasoning else ""
    answer = f"{think}<answer>{letter}. {ctx.kg.name(record.label)}</answer>"
    return [sft_row(ctx, record, "mcq", [user(question), assistant(answer)], "mcq")]


def open_diagnosis(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    question = rng.choice(spec.templates or text.OPEN_QUESTIONS)
    think = f"<think>{text.reasoning(ctx.kg, record, rng, 1)}</think>" if spec.with_reasoning else ""
    answer = f"{think}<answer>{ctx.kg.name(record.label)}</answer>"
    return [sft_row(ctx, record, "open_diagnosis", [user(question), assistant(answer)], "open")]


def yes_no(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    kg = ctx.kg
    kinds = list(spec.questions)
    if kg.malignancy(record.label) == "premalignant" and "malignant" in kinds:
        kinds.remove("malignant")  # neither yes nor no is honest for a premalignant lesion
    if not kinds:
        return []
    which = kinds[ctx.next("yes_no_kind") % len(kinds)]
    if which == "malignant":
        malignant = kg.malignancy(record.label) == "malignant"
        question = "Is this lesion malignant? Answer yes or no."
        why = (f"The features are most consistent with {kg.name(record.label)}, which is "
               f"{kg.malignancy(record.label)}.")
        verdict = "yes" if malignant else "no"
        answer = f"<think>{text.metadata_sentence(kg, record)} {why}</think><answer>{verdict}</answer>"
    else:
        ask_true = ctx.next("yes_no_truth") % 2 == 0
        target = record.label if ask_true else distractors(ctx, record.label, 1, rng, "graph")[0]
        question = f"Is this {kg.name(target)}? Answer yes or no."
        why = (f"The findings fit {kg.name(record.label)}." if ask_true
               else text.contrast(kg, record.label, target) + f" It is more likely {kg.name(record.label)}.")
        answer = f"<think>{why}</think><answer>{'yes' if ask_true else 'no'}</answer>"
    return [sft_row(ctx, record, "yes_no", [user(question), assistant(answer)], f"yes_no:{which}")]


def attribute_items(ctx: Context, record: Record, rng: random.Random, attributes: list[str]
                    ) -> list[tuple[str, str, list[str], str]]:
    """(attribute, question, options, answer) supported by the metadata or the graph; never invented."""
    kg = ctx.kg
    out = []
    for attr in attributes:
        if attr in ("morphology", "colour"):
            right = kg.features(record.label, attr)
            wrong = [f for f in kg.lacks(record.label) if f.startswith(attr + ":")]
            if not right or len(wrong) < 2:
                continue
            opts = [kg.name(rng.choice(right)), *[kg.name(w) for w in rng.sample(wrong, 2)]]
            rng.shuffle(opts)
            answer = next(o for o in opts if any(kg.name(r) == o for r in right))
            q = f"Which {attr} is typical of the condition shown?\n{format_options(opts)}"
            out.append((attr, q, opts, f"{LETTERS[opts.index(answer)]}. {answer}"))
        elif attr == "site" and record.site:
            out.append((attr, "Where on the body is this lesion?", [], kg.name("site:" + record.site)))
        elif attr == "fitzpatrick" and record.fitzpatrick:
            out.append((attr, "What is the Fitzpatrick skin type in this image?", [],
                        f"type {text.ROMAN[record.fitzpatrick]}"))
        elif attr == "malignancy":
            out.append((attr, "Is this lesion benign, premalignant or malignant?", ["benign", "premalignant",
                                                                                    "malignant"],
                        kg.malignancy(record.label) or "benign"))
    return out


def attribute(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    items = attribute_items(ctx, record, rng, list(spec.attributes))
    if not items:
        return []
    attr, q, _, ans = items[ctx.next("attribute") % len(items)]
    return [sft_row(ctx, record, "attribute", [user(q), assistant(f"<answer>{ans}</answer>")], f"attribute:{attr}")]


def reasoning_trace(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    question = rng.choice(spec.templates or text.OPEN_QUESTIONS)
    answer = text.dermiq_answer(ctx.kg, record, rng, spec.n_differentials)
    return [sft_row(ctx, record, "reasoning_trace", [user(question), assistant(answer)], "open")]


def conversation(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    kg = ctx.kg
    name = kg.name(record.label)
    diffs = [kg.name(d) for d, _ in kg.differentials(record.label)[:2]]
    feats = text.typical_features(kg, record.label, rng, text.is_dermoscopic(record), 3)
    level = text.referral_level(kg, record.label)
    first = (f"This looks most like {name}." + (f" It typically shows {text.join(feats)}." if feats else "")
             + (f" Other possibilities include {text.join(diffs)}." if diffs else "")
             + f" {text.REFERRAL[level]} {text.DISCLAIMER}")
    messages = [user(rng.choice(text.PATIENT_OPENERS).format(site=text.site_phrase(kg, record))), assistant(first)]
    if spec.turns >= 2:
        steps = {"urgent": "Do not wait: book an appointment with a dermatologist now. Meanwhile protect it from "
                           "the sun and note any change in size, colour or bleeding.",
                 "soon": "Book an appointment with a dermatologist in the coming weeks; they can confirm it, "
                         "often with dermoscopy, and discuss treatment.",
                 "routine": "It is usually not dangerous. A doctor can confirm it and suggest treatment if it "
                            "bothers you; see one sooner if it changes, bleeds or spreads."}[level]
        messages += [user_text(rng.choice(text.FOLLOW_UPS)), assistant(steps)]
    if spec.turns >= 3 and diffs:
        other = kg.differentials(record.label)[0][0]
        messages += [user_text(f"Could it be {kg.name(other)} instead?"),
                     assistant(text.contrast(kg, record.label, other) + f" {name} remains more likely.")]
    return [sft_row(ctx, record, "conversation", messages, "conversation")]


# ------------------------------------------------------------------ GRPO, preference pairs, evaluation


def difficulty(ctx: Context, label: str) -> float:
    """0 (easy) .. 1 (hard): rarer classes and classes with close look-alikes among this build's labels."""
    top = max(ctx.label_counts.values())
    rarity = 1 - ctx.label_counts[label] / top
    weights = dict(ctx.kg.differentials(label))
    confusable = max((weights.get(o, 0.0) for o in ctx.labels if o != label), default=0.0)
    return round(0.5 * rarity + 0.5 * confusable, 4)


def grpo_prompt(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    kg = ctx.kg
    if spec.question == "mcq":
        opts, letter = options_for(ctx, record.label, spec.options, rng, spec.distractors, f"grpo_mcq-{record.split}")
        question = f"{rng.choice(text.MCQ_QUESTIONS)}\n{format_options(opts)}\nAnswer with the letter."
        answer = letter
    else:
        opts, question, answer = [], rng.choice(spec.templates or text.OPEN_QUESTIONS), kg.name(record.label)
    feats = text.typical_features(kg, record.label, rng, text.is_dermoscopic(record), 2)
    n = sum(ctx.label_counts.values())
    return [{
        "prompt": with_system(ctx, [user(question)]), "label": record.label, "label_name": kg.name(record.label),
        "category_path": kg.category_path(record.label), "options": opts, "answer": answer,
        "question_type": spec.question, "hint": f"Hint: look for {text.join(feats)}." if feats else "",
        "difficulty": difficulty(ctx, record.label),
        "class_weight": round(n / (len(ctx.label_counts) * ctx.label_counts[record.label]), 6),
        "site": record.site or "", "fitzpatrick": record.fitzpatrick or 0,
        "record_facts": RecordFacts.from_meta(record.meta).to_json(),
    }]


def _perturb(ctx: Context, record: Record, rng: random.Random, kind: str, chosen_think: str) -> str | None:
    kg = ctx.kg
    name = kg.name(record.label)
    if kind == "wrong_diagnosis":
        wrong = distractors(ctx, record.label, 1, rng, "graph")[0]
        return (f"<think>{text.reasoning(kg, record, rng, 2, label=wrong)}</think>"
                f"<answer>{kg.name(wrong)}</answer>")
    if kind == "contradicted_feature":
        lacks = kg.lacks(record.label)
        if not lacks:
            return None
        bad = kg.name(rng.choice(lacks))
        return f"<think>{chosen_think} The lesion also shows {bad}.</think><answer>{name}</answer>"
    if kind == "missing_referral":
        if kg.malignancy(record.label) not in ("malignant", "premalignant"):
            return None
        stripped = chosen_think
        for sentence in text.REFERRAL.values():
            stripped = stripped.replace(" " + sentence, "")
        return f"<think>{stripped}</think><answer>{name}</answer>"
    if kind == "hallucinated_disease":
        fake = rng.choice(FAKE_DISEASES)
        return (f"<think>{text.metadata_sentence(kg, record)} The findings are consistent with {fake}.</think>"
                f"<answer>{fake}</answer>")
    if kind == "broken_format":
        return f"{chosen_think} Diagnosis: {name}"
    if kind == "wrong_record_fact":
        return _wrong_record_fact(ctx, record, rng, chosen_think, name)
    raise ValueError(kind)


def _wrong_record_fact(ctx: Context, record: Record, rng: random.Random, chosen_think: str, name: str
                       ) -> str | None:
    """The chosen trace with one fact of the record stated wrongly (a reported symptom denied, a denied one
    reported, or another site): right diagnosis, ungrounded reasoning. None when the record states nothing."""
    present, absent = record.meta.get("symptoms") or [], record.meta.get("symptoms_absent") or []
    facts = [("deny", s) for s in present] + [("report", s) for s in absent]
    if facts:
        how, symptom = rng.choice(facts)
        word = text.SYMPTOM_WORDS.get(symptom, symptom)
        wrong = f"The record reports no {word}." if how == "deny" else f"Reported here: {word}."
    elif record.site:
        sites = [s for s in ("face", "back", "hand", "foot", "scalp", "chest")  # unrelated as the scorer sees it
                 if not ctx.kg.sites_related("site:" + s, "site:" + record.site)]
        wrong = f"Here: the lesion is on the {ctx.kg.name('site:' + rng.choice(sites))}."
    else:
        return None
    return f"<think>{chosen_think} {wrong}</think><answer>{name}</answer>"


def preference_pair(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    question = rng.choice(text.OPEN_QUESTIONS)
    think = text.reasoning(ctx.kg, record, rng, 2)
    chosen = f"<think>{think}</think><answer>{ctx.kg.name(record.label)}</answer>"
    order = list(spec.perturbations)
    start = ctx.next("preference") % len(order)
    for kind in order[start:] + order[:start]:
        rejected = _perturb(ctx, record, rng, kind, think)
        if rejected is not None:
            return [{"prompt": with_system(ctx, [user(question)]), "chosen": [assistant(chosen)],
                     "rejected": [assistant(rejected)], "perturbation": kind, "label": record.label}]
    return []


def _image_strata(record: Record) -> dict[str, Any]:
    """The strata an image gives itself (``datasets.image_facts``): ITA skin tone, its group, artefact tags; a
    dataset's own values in ``meta`` win."""
    facts = image_facts(record.image)
    ita = record.meta.get("skin_tone_ita", facts["skin_tone_ita"])
    return {"skin_tone_ita": float(ita) if ita is not None else None,
            "tone_group": record.meta.get("tone_group") or facts["tone_group"],
            "artefacts": list(record.meta.get("artefacts") or facts["artefacts"])}


def eval_item(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    kg = ctx.kg
    types = list(spec.types)
    rows = []
    base = {"label": record.label, "label_name": kg.name(record.label), "dataset": record.dataset,
            "split": record.split, "group_id": record.group_id, "image_id": Path(record.image).stem,
            "fitzpatrick": record.fitzpatrick or 0,
            "fitzpatrick_group": fitzpatrick_group(record.fitzpatrick) or record.meta.get("fitzpatrick_group") or "",
            "site": record.site or "", "malignancy": kg.malignancy(record.label) or "",
            "source_label": record.source_label, "record_facts": RecordFacts.from_meta(record.meta).to_json(),
            **_image_strata(record)}
    for t in types:
        if t == "mcq":
            opts, letter = options_for(ctx, record.label, spec.options, rng, spec.distractors,
                                       f"eval_mcq-{record.split}")
            q = f"{text.MCQ_QUESTIONS[0]}\n{format_options(opts)}\nAnswer with the letter of the best option."
            rows.append({**base, "question": q, "options": opts, "answer": letter, "type": "mcq"})
        elif t == "open":
            rows.append({**base, "question": text.OPEN_QUESTIONS[0], "options": [], "answer": kg.name(record.label),
                         "type": "open"})
        elif t == "yes_no":
            malignant = kg.malignancy(record.label) == "malignant"
            if kg.malignancy(record.label) != "premalignant":
                rows.append({**base, "question": "Is this lesion malignant? Answer yes or no.",
                             "options": ["yes", "no"], "answer": "yes" if malignant else "no", "type": "yes_no"})
        elif t == "attribute":
            for attr, q, opts, ans in attribute_items(ctx, record, rng, ["site", "fitzpatrick", "malignancy"]):
                rows.append({**base, "question": q, "options": opts, "answer": ans, "type": f"attribute:{attr}"})
    return rows


def image_label(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    """The image and its class, for the vision stage (which trains on train and only reports val/test)."""
    return [{"label": record.label, "label_name": ctx.kg.name(record.label), "dataset": record.dataset,
             "site": record.site or "", "fitzpatrick": record.fitzpatrick or 0}]


def caption(ctx: Context, record: Record, rng: random.Random, spec) -> list[dict]:
    """A short caption (modality, class, two typical features): the align stage's rows."""
    kg = ctx.kg
    feats = text.typical_features(kg, record.label, rng, text.is_dermoscopic(record), 2)
    words = f"{text.modality(record)} of {kg.name(record.label)}" + (f": {text.join(feats)}" if feats else "")
    return [sft_row(ctx, record, "caption", [user(rng.choice(text.CAPTION_QUESTIONS)),
                                              assistant(text.cap(text.with_article(words)) + ".")],
                    "caption")]


BUILDERS = {
    "image_label": image_label, "caption": caption,
    "mcq": mcq, "open_diagnosis": open_diagnosis, "yes_no": yes_no, "attribute": attribute,
    "reasoning_trace": reasoning_trace, "conversation": conversation, "grpo_prompt": grpo_prompt,
    "preference_pair": preference_pair, "eval_item": eval_item,
}
SFT_KINDS = ("caption", "mcq", "open_diagnosis", "yes_no", "attribute", "reasoning_trace", "conversation")
