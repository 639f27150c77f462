"""Class scores for closed-set questions: the log-probability of each candidate answer given the image and the prompt,
read from the served model, so a suite whose open question has a closed label set reports AUC and can decode at
another operating point than the generated answer (``operating_point.py``).

Each candidate answer (the recipe's answer form, ``<answer>{name}</answer>``) is written into the chat as the
assistant's final message and sent to vLLM's chat completions with ``continue_final_message`` and
``prompt_logprobs``: the log-probabilities of the prompt's own tokens come back, and the sum over the candidate's
tokens (the last tokens of the prompt, as ``/tokenize`` splits the candidate alone; checked on every answer) is
``log P(candidate | image, question)``, the same number ``transformers`` computes from the model's logits. One request
per item and candidate (``K`` per item); they run as concurrently as the suite's answers. Results are appended to
``class_scores.jsonl`` as they arrive (a rerun scores only the items missing), each line tagged with the candidate
set it was scored against.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from dermvlm.evaluation.runner import (
    EndpointError,
    EndpointOptions,
    ItemError,
    _append,
    gather_or_cancel,
    messages_for,
    read_predictions,
    with_retries,
)

SCORES = "class_scores.jsonl"
ANSWER_TEMPLATE = "<answer>{name}</answer>"
MAX_CLASSES = 50  # beyond this a "closed set" is an open question; scoring every candidate would not pay


class ClassScoreError(EndpointError):
    """The endpoint cannot give prompt log-probabilities (not a vLLM server, or one without ``/tokenize``)."""


def closed_classes(items: list[dict[str, Any]]) -> dict[str, str]:
    """The closed label set of a suite's open questions: gold label → answer name, sorted by label; empty when the
    suite has no open items with labels, fewer than two classes or more than ``MAX_CLASSES``."""
    classes = {it["label"]: it.get("label_name") or it.get("answer") or it["label"]
               for it in items if it.get("type") == "open" and it.get("label")}
    return dict(sorted(classes.items())) if 2 <= len(classes) <= MAX_CLASSES else {}


def set_digest(classes: dict[str, str], template: str) -> str:
    """What a line of ``class_scores.jsonl`` was scored against (candidates and their written form)."""
    return hashlib.sha256(json.dumps([template, classes], sort_keys=True).encode()).hexdigest()[:16]


def read_scores(out_dir: Path, digest: str) -> dict[str, dict[str, float]]:
    """Item id → {label: log-probability} of the lines scored against ``digest``."""
    return {r["id"]: r["logprobs"] for r in read_predictions(Path(out_dir) / SCORES)
            if r.get("set") == digest and isinstance(r.get("logprobs"), dict)}


def _root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def candidate_tokens(opts: EndpointOptions, texts: list[str]) -> list[list[int]]:
    """Token ids of each candidate text alone (vLLM's ``POST /tokenize``, no special tokens added)."""
    import httpx

    out = []
    async with httpx.AsyncClient(timeout=opts.timeout) as http:
        for text in texts:
            try:
                r = await http.post(f"{_root(opts.base_url)}/tokenize",
                                    headers={"Authorization": f"Bearer {opts.api_key}"},
                                    json={"model": opts.model, "prompt": text, "add_special_tokens": False})
                tokens = r.json()["tokens"] if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                tokens = None
            if not tokens:
                raise ClassScoreError(f"{opts.base_url}: POST /tokenize did not tokenize {text!r}: class scores need "
                                      "a vLLM server (prompt log-probabilities and /tokenize)")
            out.append(list(tokens))
    return out


def answer_logprob(response: Any, tokens: list[int]) -> float:
    """The sum of the prompt log-probabilities over the candidate's tokens (the prompt's last ``len(tokens)``)."""
    extra = getattr(response, "model_extra", None) or {}
    ids, logprobs = extra.get("prompt_token_ids"), extra.get("prompt_logprobs")
    if not ids or not logprobs or len(ids) != len(logprobs):
        raise ClassScoreError("the endpoint returned no prompt log-probabilities (prompt_logprobs, return_token_ids): "
                              "class scores need a vLLM server")
    n = len(tokens)
    if list(ids[-n:]) != list(tokens):
        raise ItemError(f"the candidate's tokens {tokens} are not the end of the prompt {list(ids[-n:])}: the chat "
                        "template merged them with what precedes; class scores for this item are not exact", None)
    total = 0.0
    for tid, entry in zip(ids[-n:], logprobs[-n:], strict=True):
        total += float(entry[str(tid)]["logprob"] if str(tid) in entry else entry[tid]["logprob"])
    return total


async def _score_item(client, item: dict[str, Any], opts: EndpointOptions, system: str | None,
                      candidates: dict[str, str], tokens: dict[str, list[int]], sem: asyncio.Semaphore
                      ) -> dict[str, float]:
    async def one(label: str) -> tuple[str, float]:
        messages = [*messages_for(item, system), {"role": "assistant", "content": candidates[label]}]
        extra = {"continue_final_message": True, "add_generation_prompt": False, "prompt_logprobs": 0,
                 "return_token_ids": True}
        async with sem:
            r = await with_retries(lambda: client.chat.completions.create(
                model=opts.model, messages=messages, max_tokens=1, temperature=0.0, timeout=opts.timeout,
                extra_body=extra), opts)
        return label, answer_logprob(r, tokens[label])

    return dict(await asyncio.gather(*(one(label) for label in candidates)))


def score_all(items: list[dict[str, Any]], classes: dict[str, str], opts: EndpointOptions, out_dir: Path,
              system: str | None, template: str = ANSWER_TEMPLATE) -> dict[str, Any]:
    """Score every open item of ``items`` not yet in ``class_scores.jsonl`` against every class; return counts."""
    import time

    import openai

    digest = set_digest(classes, template)
    done = set(read_scores(out_dir, digest))
    todo = [it for it in items if it.get("type") == "open" and it.get("label") in classes and it["id"] not in done]
    started = time.perf_counter()
    counts = {"scored": 0, "errors": 0, "skipped_as_done": len(done)}
    if not todo:
        return counts | {"wall_seconds": 0.0}
    candidates = {label: template.replace("{name}", name) for label, name in classes.items()}

    async def run() -> None:
        tokens = dict(zip(candidates, await candidate_tokens(opts, list(candidates.values())), strict=True))
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
        sem = asyncio.Semaphore(opts.concurrency)

        async def one(item: dict[str, Any]) -> None:
            try:
                scores = await _score_item(client, item, opts, system, candidates, tokens, sem)
            except ItemError:
                counts["errors"] += 1
                return
            _append(out_dir / SCORES, {"id": item["id"], "set": digest,
                                       "logprobs": {k: round(v, 6) for k, v in scores.items()}})
            counts["scored"] += 1

        await gather_or_cancel([one(it) for it in todo], client)

    asyncio.run(run())
    return counts | {"wall_seconds": round(time.perf_counter() - started, 2)}


def score_image(opts: EndpointOptions, image: bytes, question: str, classes: dict[str, str],
                system: str | None = None, template: str = ANSWER_TEMPLATE) -> dict[str, float]:
    """Class log-probabilities for one image and question (label → log P(answer)), e.g. for the chat page; rank
    them at an operating point with ``operating_point.rank``."""
    import openai

    candidates = {label: template.replace("{name}", name) for label, name in classes.items()}

    async def run() -> dict[str, float]:
        tokens = dict(zip(candidates, await candidate_tokens(opts, list(candidates.values())), strict=True))
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
        try:
            return await _score_item(client, {"image": image, "question": question}, opts, system, candidates,
                                     tokens, asyncio.Semaphore(opts.concurrency))
        finally:
            await client.close()

    return asyncio.run(run())
