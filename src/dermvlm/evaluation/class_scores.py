"""Class scores for closed-set questions: how likely the served model is to give each candidate answer, given the
image and the prompt, so a suite whose open question has a closed label set reports AUC and can decode at another
operating point than the generated answer (``operating_point.py``).

The candidates (the recipe's answer form, ``<answer>{name}</answer>``) are split into tokens as vLLM's
``/tokenize`` splits them and laid out as a tree. A class's score is the log-probability of its tokens after the
prefix every candidate shares, up to the token that sets it apart from every other candidate: the model's own
choice among the candidates, token by token (what follows that token decides nothing between them and is not
scored). Each point where the tree is read (a node on some class's scored path) is one chat-completions request
with the node's tokens as the assistant's final message (``continue_final_message``), one generated token and
``logprob_token_ids`` = the node's children: vLLM returns their log-probabilities, the same numbers transformers
computes from the model's logits. Seven DermaMNIST classes whose names start with different tokens take one
request per item (the whole-answer scoring with prompt log-probabilities took one per class, and no prefix caching).
Every request checks that its prompt ends with the node's tokens. Results are appended to ``class_scores.jsonl``
as they arrive (a rerun scores only the items missing), each line tagged with the candidate set it was scored
against.
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
METHOD = "choice-tokens"  # what a score is (module docstring); part of every line's candidate-set digest

Tree = dict[tuple[int, ...], set[int]]  # node (the tokens read so far) -> the candidates' next tokens there
Paths = dict[str, list[tuple[tuple[int, ...], int]]]  # label -> the (node, next token) pairs its score sums


class ClassScoreError(EndpointError):
    """The endpoint cannot give token log-probabilities (not a vLLM server, or one without ``/tokenize``), or the
    candidates cannot be told apart by their tokens."""


def closed_classes(items: list[dict[str, Any]]) -> dict[str, str]:
    """The closed label set of a suite's open questions: gold label → answer name, sorted by label; empty when the
    suite has no open items with labels, fewer than two classes or more than ``MAX_CLASSES``."""
    classes = {it["label"]: it.get("label_name") or it.get("answer") or it["label"]
               for it in items if it.get("type") == "open" and it.get("label")}
    return dict(sorted(classes.items())) if 2 <= len(classes) <= MAX_CLASSES else {}


def set_digest(classes: dict[str, str], template: str) -> str:
    """What a line of ``class_scores.jsonl`` was scored against (candidates, their written form, the method)."""
    return hashlib.sha256(json.dumps([METHOD, template, classes], sort_keys=True).encode()).hexdigest()[:16]


def read_scores(out_dir: Path, digest: str) -> dict[str, dict[str, float]]:
    """Item id → {label: log-probability} of the lines scored against ``digest``."""
    return {r["id"]: r["logprobs"] for r in read_predictions(Path(out_dir) / SCORES)
            if r.get("set") == digest and isinstance(r.get("logprobs"), dict)}


def choice_paths(tokens: dict[str, list[int]]) -> Paths:
    """Per label, the (node, next token) pairs its score sums: from the end of the prefix all candidates share to
    the first token no other candidate has at that position. Raises ``ClassScoreError`` for a candidate whose tokens
    are all another's (identical, or a prefix of it)."""
    seqs = list(tokens.values())
    common = 0
    while all(len(s) > common and s[common] == seqs[0][common] for s in seqs):
        common += 1
    paths: Paths = {}
    for label, seq in tokens.items():
        others = [(other, s) for other, s in tokens.items() if other != label]
        depth = next((d for d in range(common + 1, len(seq) + 1) if all(s[:d] != seq[:d] for _, s in others)), None)
        if depth is None:
            twin = next(other for other, s in others if s[:len(seq)] == seq)
            raise ClassScoreError(f"the answers of {label!r} and {twin!r} cannot be told apart by their tokens "
                                  f"({seq}): give the classes distinct names (label_map) or class_answer")
        paths[label] = [(tuple(seq[:j]), seq[j]) for j in range(common, depth)]
    return paths


def tree(paths: Paths) -> Tree:
    """The nodes the paths read, each with the tokens asked for there."""
    nodes: Tree = {}
    for steps in paths.values():
        for node, token in steps:
            nodes.setdefault(node, set()).add(token)
    return nodes


def _root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


async def _server_call(opts: EndpointOptions, route: str, body: dict[str, Any], field: str, what: str) -> Any:
    import httpx

    async with httpx.AsyncClient(timeout=opts.timeout) as http:
        try:
            r = await http.post(f"{_root(opts.base_url)}/{route}", headers={"Authorization": f"Bearer {opts.api_key}"},
                                json={"model": opts.model, **body})
            value = r.json()[field] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            value = None
    if value is None or value == []:
        raise ClassScoreError(f"{opts.base_url}: POST /{route} did not {what}: class scores need a vLLM server "
                              "(token log-probabilities, /tokenize and /detokenize)")
    return value


async def candidate_tokens(opts: EndpointOptions, texts: list[str]) -> list[list[int]]:
    """Token ids of each candidate text alone (vLLM's ``POST /tokenize``, no special tokens added)."""
    return [list(await _server_call(opts, "tokenize", {"prompt": text, "add_special_tokens": False}, "tokens",
                                    f"tokenize {text!r}")) for text in texts]


async def node_texts(opts: EndpointOptions, nodes: Tree) -> dict[tuple[int, ...], str]:
    """The text of each node's tokens (vLLM's ``POST /detokenize``), written as the assistant's final message."""
    return {node: (await _server_call(opts, "detokenize", {"tokens": list(node)}, "prompt",
                                      f"detokenize {list(node)}") if node else "") for node in nodes}


def next_token_logprobs(response: Any, node: tuple[int, ...], wanted: set[int]) -> dict[int, float]:
    """The log-probabilities of ``wanted`` after the prompt, checked to end with ``node``'s tokens."""
    extra = getattr(response, "model_extra", None) or {}
    ids = extra.get("prompt_token_ids")
    content = getattr(getattr(response.choices[0], "logprobs", None), "content", None) if response.choices else None
    if not ids or not content:
        raise ClassScoreError("the endpoint returned no token log-probabilities (logprob_token_ids, "
                              "return_token_ids): class scores need a vLLM server")
    if node and list(ids[-len(node):]) != list(node):
        raise ItemError(f"the answer's tokens {list(node)} are not the end of the prompt {list(ids[-len(node):])}: "
                        "the chat template merged them with what precedes; class scores for this item are not exact",
                        None)
    read = {int(e.token.removeprefix("token_id:")): float(e.logprob) for e in content[0].top_logprobs}
    if not wanted <= set(read):
        raise ItemError(f"the endpoint did not return log-probabilities for tokens {sorted(wanted - set(read))}", None)
    return {t: read[t] for t in wanted}


class Scorer:
    """Scores items against one candidate set: the tree's requests per item, summed along each class's path."""

    def __init__(self, opts: EndpointOptions, classes: dict[str, str], template: str, system: str | None) -> None:
        self.opts, self.system = opts, system
        self.candidates = {label: template.replace("{name}", name) for label, name in classes.items()}
        self.paths: Paths = {}
        self.nodes: Tree = {}
        self.texts: dict[tuple[int, ...], str] = {}

    async def prepare(self) -> None:
        """Tokenize the candidates and lay out the tree (once per run)."""
        tokens = dict(zip(self.candidates, await candidate_tokens(self.opts, list(self.candidates.values())),
                          strict=True))
        self.paths = choice_paths(tokens)
        self.nodes = tree(self.paths)
        self.texts = await node_texts(self.opts, self.nodes)

    async def score(self, client, item: dict[str, Any], sem: asyncio.Semaphore) -> dict[str, float]:
        """label → the log-probability of its choice tokens for one item."""
        nodes = self.nodes

        async def read(node: tuple[int, ...]) -> tuple[tuple[int, ...], dict[int, float]]:
            messages = messages_for(item, self.system)
            if node:
                messages = [*messages, {"role": "assistant", "content": self.texts[node]}]
            extra = {"continue_final_message": bool(node), "add_generation_prompt": not node,
                     "logprob_token_ids": sorted(nodes[node]), "return_tokens_as_token_ids": True,
                     "return_token_ids": True}
            async with sem:
                r = await with_retries(lambda: client.chat.completions.create(
                    model=self.opts.model, messages=messages, max_tokens=1, temperature=0.0, logprobs=True,
                    timeout=self.opts.timeout, extra_body=extra), self.opts)
            return node, next_token_logprobs(r, node, nodes[node])

        read_at = dict(await asyncio.gather(*(read(node) for node in nodes)))
        return {label: sum(read_at[node][token] for node, token in steps) for label, steps in self.paths.items()}


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
    scorer = Scorer(opts, classes, template, system)

    async def run() -> None:
        await scorer.prepare()
        counts["requests_per_item"] = len(scorer.nodes)
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
        sem = asyncio.Semaphore(opts.concurrency)

        async def one(item: dict[str, Any]) -> None:
            try:
                scores = await scorer.score(client, item, sem)
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
    """Class log-probabilities for one image and question (label → score), e.g. for the chat page; rank them at an
    operating point with ``operating_point.rank``."""
    import openai

    scorer = Scorer(opts, classes, template, system)

    async def run() -> dict[str, float]:
        await scorer.prepare()
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
        try:
            return await scorer.score(client, {"image": image, "question": question},
                                      asyncio.Semaphore(opts.concurrency))
        finally:
            await client.close()

    return asyncio.run(run())
