"""Reward functions for GRPO(++), by name (open-r1 style registry), graded by the knowledge graph.

Each function has TRL's reward signature ``fn(prompts, completions, **columns) -> list[float]``; the recipe's gold
columns (``label``, ``options``, ``answer``, ``question_type``, ``site``, ``fitzpatrick``, ``record_facts``) arrive
as keyword lists.
Completions are conversational (``[{"role": "assistant", "content": ...}]``) or plain strings.

- ``format``: 1 for ``<think>…</think><answer>…</answer>``, 0.5 for an answer tag alone, else 0.
- ``answer_only``: 1 for an answer tag and nothing else (``<answer>…</answer>``: no reasoning), else 0.
- ``exact``: 1 when the answer names the gold diagnosis (or a subtype/member of it; the right letter for MCQ).
- ``partial_credit``: the graph's hierarchical credit (exact 1, broader 0.8, sibling 0.5, same branch 0.3/0.2,
  same malignancy group 0.15, else 0), except that naming *another class of the training set* earns 0: among a
  closed set of classes a competing class is a wrong answer, not a near miss (else "nevus" on a melanoma would
  earn 0.2 and the majority class would be paid for most of its mistakes).
- ``reasoning_consistency``: the grounded claims inside ``<think>`` (what the record confirms or denies for this
  image; a stereotype stated as a finding, which no record decides, earns nothing) with differential
  plausibility, less a share for wrong class knowledge ("typical of X" claims X lacks); 0 without reasoning.
- ``kg_score``: the KG scorer's scalar (diagnosis, features, differentials, hallucinations, safety).
- ``overlong``: DAPO's soft overlong penalty: 0 up to ``max_len - buffer`` tokens, falling linearly to -1 at
  ``max_len`` (set by the stage from ``max_completion_length``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dermvlm.knowledge import KGScorer
from dermvlm.knowledge.scorer import knowledge_error_rate

FORMAT_RE = re.compile(r"^\s*<think>(?P<think>.+?)</think>\s*<answer>(?P<answer>.+?)</answer>\s*$", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
ANSWER_ONLY_RE = re.compile(r"^\s*<answer>[^<]+</answer>\s*$")
LETTER_RE = re.compile(r"^\s*\(?([A-J])\b[.):]?", re.S)

_SCORER: KGScorer | None = None


def scorer() -> KGScorer:
    global _SCORER
    if _SCORER is None:
        _SCORER = KGScorer()
    return _SCORER


def completion_text(completion: Any) -> str:
    """The assistant text of a TRL completion (conversational or plain)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
        return content or ""
    return ""


def answer_of(text: str) -> str | None:
    found = ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def resolve_choice(answer: str, options: list[str] | None) -> str:
    """For MCQ answers (``B`` or ``B. melanoma``) the option's name; otherwise the answer itself."""
    if options:
        m = LETTER_RE.match(answer)
        if m and "ABCDEFGHIJ".index(m.group(1)) < len(options):
            return options["ABCDEFGHIJ".index(m.group(1))]
    return answer


def _columns(kwargs: dict, n: int) -> list[dict]:
    keys = ("label", "options", "answer", "question_type", "site", "fitzpatrick", "record_facts")
    return [{k: (kwargs[k][i] if k in kwargs and kwargs[k] is not None else None) for k in keys} for i in range(n)]


def format_reward(prompts, completions, **kwargs) -> list[float]:
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(1.0 if FORMAT_RE.match(text) else 0.5 if answer_of(text) else 0.0)
    return out


def answer_only_reward(prompts, completions, **kwargs) -> list[float]:
    return [1.0 if ANSWER_ONLY_RE.match(completion_text(c)) else 0.0 for c in completions]


def diagnosis_credit(answer: str | None, col: dict) -> float:
    """The graph's hierarchical credit for an answer (an MCQ letter counts as its option)."""
    if answer is None:
        return 0.0
    return scorer().score(f"<answer>{resolve_choice(answer, col['options'])}</answer>", col["label"]).diagnosis_credit


def exact_reward(prompts, completions, **kwargs) -> list[float]:
    out = []
    for c, col in zip(completions, _columns(kwargs, len(completions)), strict=True):
        answer = answer_of(completion_text(c))
        if answer is not None and col["options"] and col["answer"] and len(col["answer"]) == 1:
            m = LETTER_RE.match(answer)
            out.append(1.0 if m and m.group(1) == col["answer"] else 0.0)
        else:
            out.append(1.0 if diagnosis_credit(answer, col) == 1.0 else 0.0)
    return out


def closed_set_credit(answer: str | None, col: dict, classes: frozenset[str]) -> float:
    """``diagnosis_credit``, but 0 for an answer that names another of ``classes`` (see the module docstring)."""
    if answer is None:
        return 0.0
    result = scorer().score(f"<answer>{resolve_choice(answer, col['options'])}</answer>", col["label"])
    named, gold = result.answered, col["label"]
    kg = scorer().kg
    if named in classes and named != gold and not (kg.covers(gold, named) or kg.covers(named, gold)):
        return 0.0
    return result.diagnosis_credit


def make_partial_credit_reward(classes: list[str] | None = None) -> Callable:
    """The ``partial_credit`` reward; with the training set's ``classes``, competing classes earn 0."""
    closed = frozenset(classes or ())

    def partial_credit_reward(prompts, completions, **kwargs) -> list[float]:
        cols = _columns(kwargs, len(completions))
        if not closed:
            return [diagnosis_credit(answer_of(completion_text(c)), col) for c, col in zip(completions, cols,
                                                                                         strict=True)]
        return [closed_set_credit(answer_of(completion_text(c)), col, closed)
                for c, col in zip(completions, cols, strict=True)]

    return partial_credit_reward


partial_credit_reward = make_partial_credit_reward()


def reasoning_consistency_reward(prompts, completions, **kwargs) -> list[float]:
    out = []
    for c, col in zip(completions, _columns(kwargs, len(completions)), strict=True):
        m = FORMAT_RE.match(completion_text(c))
        if not m:
            out.append(0.0)
            continue
        b = scorer().score(m.group("think"), col["label"], site=col["site"] or None,
                           fitzpatrick=col["fitzpatrick"] or None, facts=col["record_facts"])
        parts = [v for v in (b.feature_score, b.differential_score) if v is not None]
        value = sum(parts) / len(parts) if parts else 0.0
        value -= 0.5 * min(len(b.unknown_diseases), 1) + 0.25 * knowledge_error_rate(b)
        out.append(round(max(0.0, value), 4))
    return out


def kg_score_reward(prompts, completions, **kwargs) -> list[float]:
    out = []
    for c, col in zip(completions, _columns(kwargs, len(completions)), strict=True):
        text = completion_text(c)
        answer = answer_of(text)
        if answer is not None and col["options"]:
            text = text.replace(f"<answer>{answer}</answer>",
                                f"<answer>{resolve_choice(answer, col['options'])}</answer>")
        out.append(scorer().score(text, col["label"], site=col["site"] or None,
                                  fitzpatrick=col["fitzpatrick"] or None, facts=col["record_facts"]).score)
    return out


def make_overlong_reward(max_len: int, buffer: int) -> Callable:
    """DAPO soft overlong punishment over completion token counts."""

    def overlong_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [
            len(completion_text(c).split()) for c in completions]
        start = max_len - buffer
        return [0.0 if n <= start else max(-1.0, -(n - start) / max(buffer, 1)) for n in lengths]

    overlong_reward.__name__ = "overlong_reward"
    return overlong_reward


REWARDS: dict[str, Callable] = {
    "format": format_reward,
    "answer_only": answer_only_reward,
    "exact": exact_reward,
    "partial_credit": partial_credit_reward,
    "reasoning_consistency": reasoning_consistency_reward,
    "kg_score": kg_score_reward,
}


def get_rewards(weights: dict[str, float], max_completion_length: int, overlong_buffer: int,
                classes: list[str] | None = None) -> tuple[list[Callable], list[float]]:
    """Reward functions and their weights, in the order of ``weights`` (``overlong`` built for the length,
    ``partial_credit`` for the training set's ``classes``)."""
    funcs, ws = [], []
    for name, w in weights.items():
        if name == "overlong":
            funcs.append(make_overlong_reward(max_completion_length, overlong_buffer))
        elif name == "partial_credit":
            funcs.append(make_partial_credit_reward(classes))
        elif name in REWARDS:
            funcs.append(REWARDS[name])
        else:
            raise KeyError(f"unknown reward {name!r}; known: {', '.join([*REWARDS, 'overlong'])}")
        ws.append(float(w))
    return funcs, ws
