"""An LLM judge for open-ended answers, through any OpenAI-compatible endpoint.

Each open-ended item (``open_text``: a benchmark's free-text reference answer) is shown to the judge with the
question, the reference and the candidate answer; the judge answers ``yes`` or ``no``. Verdicts are cached in
``judge.jsonl`` beside the predictions, keyed by the judge (model name and what its endpoint reports of it) and by
a hash of what it was shown (question, reference, candidate), so a rerun asks only what changed and neither another
judge's verdicts nor a verdict on an edited reference are reused.
A verdict that is neither yes nor no counts as unparsable, never as either.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from dermvlm.evaluation.runner import BREAKER, EndpointOptions, first_choice, one_line, probe, read_predictions
from dermvlm.evaluation.signals import run_interruptible

JUDGE_FILE = "judge.jsonl"
PROMPT_VERSION = 1
PROMPT = (
    "You are grading an answer to a question about a medical image. Question: {question}\n"
    "Reference answer: {reference}\nCandidate answer: {candidate}\n"
    "Does the candidate answer mean the same as the reference answer? Reply with one word: yes or no."
)
VERDICT_RE = re.compile(r"^\W*(yes|no)\b", re.I)


def verdict_of(text: str | None) -> str | None:
    """``yes`` / ``no`` from the judge's reply (its first word), else None (unparsable)."""
    m = VERDICT_RE.match(text or "")
    return m.group(1).lower() if m else None


def judge_key(opts: EndpointOptions, card: dict[str, Any]) -> str:
    """Who judges: the model name, what the endpoint says it is, and the prompt's version."""
    who = {"model": opts.model, "id": card.get("id"), "root": card.get("root"), "parent": card.get("parent"),
           "endpoint": opts.base_url.rstrip("/"), "prompt": PROMPT_VERSION}
    return hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()[:16]


def judge_predictions(preds: list[dict[str, Any]], opts: EndpointOptions, out_dir: Path,
                      card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set ``pred["judge"]`` (yes / no / None) on every open-ended prediction; returns who judged and how many
    requests failed (those items stay unjudged, ``judge`` None, and are asked again on the next run; after
    ``BREAKER`` failures in a row with no verdict the rest are not asked). A reply that is not a chat completion
    (an HTML page, ``{}``, no choices, cut-off JSON) is a failure, never a verdict. ``card``:
    the judge's ``probe`` answer when the caller already has it; else the endpoint is probed here, and a wrong
    endpoint, key or model raises ``EndpointError`` (one line) before any request."""
    import openai

    from dermvlm.evaluation.parsing import parse
    from dermvlm.knowledge import load_graph

    kg = load_graph()
    candidates = {id(p): parse(p.get("response"), p, kg).prediction or "" for p in preds if p["type"] == "open_text"}

    def answer_hash(p: dict[str, Any]) -> str:  # everything the judge is shown
        shown = json.dumps([str(p["question"]), str(p["answer"]), candidates[id(p)]])
        return hashlib.sha256(shown.encode()).hexdigest()[:16]

    key = judge_key(opts, card if card is not None else probe(opts))
    path = Path(out_dir) / JUDGE_FILE
    cached = {(rec["id"], rec["answer_sha"]): rec for rec in read_predictions(path)  # torn last line ignored
              if rec.get("judge") == key and "answer_sha" in rec}
    todo = [p for p in preds if p["type"] == "open_text" and (p["id"], answer_hash(p)) not in cached]
    failed: list[str] = []
    verdicts: list[str] = []  # ids judged in this run

    async def ask_all() -> None:
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=opts.retries)
        sem = asyncio.Semaphore(opts.concurrency)

        async def one(p: dict[str, Any]) -> None:
            prompt = PROMPT.format(question=p["question"], reference=p["answer"],
                                   candidate=candidates[id(p)] or "(no answer)")
            if len(failed) >= BREAKER and not verdicts:
                return  # the judge failed every request so far: not asking the rest
            async with sem:
                try:
                    r = await client.chat.completions.create(model=opts.model, max_tokens=8, temperature=0.0,
                                                             messages=[{"role": "user", "content": prompt}],
                                                             timeout=opts.timeout)
                except openai.APIStatusError as err:
                    failed.append(f"{p['id']}: HTTP {err.status_code} ({type(err).__name__})")
                    return
                except (openai.APIError, ValueError) as err:  # unreachable, or a body that is not JSON
                    failed.append(f"{p['id']}: {type(err).__name__}: {one_line(err, 80)}")
                    return
            choice = first_choice(r)
            if choice is None:
                failed.append(f"{p['id']}: the judge answered something that is not a chat completion "
                              f"({one_line(r, 40)!r})")
                return
            if choice.finish_reason == "abort":  # cut off by a server shutting down: no verdict, ask again
                failed.append(f"{p['id']}: the judge's reply was aborted by its server")
                return
            reply = choice.message.content or ""
            rec = {"judge": key, "id": p["id"], "answer_sha": answer_hash(p), "verdict": verdict_of(reply),
                   "reply": reply[:200]}
            with path.open("a", encoding="utf-8") as fh:  # one line per verdict, as it arrives
                fh.write(json.dumps(rec) + "\n")
            cached[(p["id"], rec["answer_sha"])] = rec
            verdicts.append(p["id"])

        try:
            await asyncio.gather(*(one(p) for p in todo))
        finally:
            await client.close()

    if todo:
        run_interruptible(ask_all())
    for p in preds:
        if p["type"] == "open_text":
            rec = cached.get((p["id"], answer_hash(p)))
            p["judge"] = rec["verdict"] if rec else None
            p["judged"] = rec is not None
    return {"model": opts.model, "endpoint": opts.base_url, "key": key, "asked": len(todo), "failed": len(failed),
            "unjudged": sum(1 for p in preds if p["type"] == "open_text" and not p["judged"]),
            "failed_examples": failed[:3]}
