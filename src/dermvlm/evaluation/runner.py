"""Ask an OpenAI-compatible endpoint every item of a suite: concurrent async requests, timeouts, retries with
backoff, and ``predictions.jsonl`` appended as answers arrive, so a rerun after a crash or a server restart skips
the items already answered.

Only answers are stored as answers. A misconfigured endpoint (wrong URL, API key or model name: checked with
``GET /models`` before the first request, and on every answer) stops the run with a one-line diagnosis
(``EndpointError``); so does a dead server (``EndpointDown``). A request that fails for one item (a 400 for a
malformed image, a 5xx after every retry) goes to ``errors.jsonl``, which holds the latest run's failures: those
items are asked again on the next run."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dermvlm.config import SuiteConfig
from dermvlm.evaluation.cache import ERRORS, PREDICTIONS
from dermvlm.evaluation.signals import run_interruptible
from dermvlm.progress import ProgressLine
from dermvlm.recipes.text import SYSTEM_PROMPT

FORMAT_REGEX = r"<think>[^<]{1,1500}</think><answer>[^<]{1,120}</answer>"
BREAKER = 8  # the first this many requests all failed: stop instead of failing every item
WRONG_URL = "not an OpenAI-compatible API base URL (it usually ends in /v1)"


class EndpointError(RuntimeError):
    """The endpoint cannot answer this evaluation (wrong URL, API key or model name); the message is one line."""


class EndpointDown(EndpointError):
    """The endpoint stopped answering (connection refused or timeouts after every retry)."""


class AbortedAnswer(Exception):
    """The server returned a cut-off answer (``finish_reason: abort``, as vLLM does for requests in flight when it
    shuts down): asked again, never recorded as an answer."""


class ItemError(Exception):
    """One item's request failed; the item is recorded in ``errors.jsonl`` and asked again on the next run."""

    def __init__(self, message: str, status: int | None):
        super().__init__(message)
        self.status = status


@dataclass
class EndpointOptions:
    base_url: str
    model: str
    api_key: str = "EMPTY"
    concurrency: int = 8
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0 (got {self.retries}, {self.timeout})")


def system_prompt(suite: SuiteConfig, override: str | None = None) -> str | None:
    value = override if override is not None else suite.system_prompt
    if value in (None, "", "none", "null"):
        return None
    return SYSTEM_PROMPT if value == "dermiq" else value


def image_url(data: bytes) -> str:
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def messages_for(item: dict[str, Any], system: str | None) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(item["image"])}},
                                             {"type": "text", "text": item["question"]}]})
    return msgs


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (predictions or errors); a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def kept_answers(path: Path) -> list[dict[str, Any]]:
    """The answers of a ``predictions.jsonl``, less any the server aborted (a file written before such answers were
    refused): those items are asked again."""
    return [p for p in read_predictions(path) if p.get("finish_reason") != "abort"]


def one_line(text: str, n: int = 200) -> str:
    return " ".join(str(text).split())[:n]


def _auth(base: str, status: int, phrase: str) -> str:
    return f"{base}: {status} {phrase}: wrong or missing --api-key"


def probe(opts: EndpointOptions, timeout: float = 30.0) -> dict[str, Any]:
    """``GET {base_url}/models``: the entry of ``opts.model`` (``id``, ``root``, ``parent``, ``max_model_len``).
    Raises ``EndpointError`` with a one-line diagnosis when the URL, the API key or the model name is wrong."""
    import httpx

    base = opts.base_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EndpointError(f"{base or '(empty URL)'}: not an http(s) URL; give the API base URL, "
                            "e.g. http://127.0.0.1:8000/v1")
    wait = min(timeout, opts.timeout)
    try:
        r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {opts.api_key}"}, timeout=wait)
    except httpx.ConnectError as err:
        why = "connection refused" if "refused" in str(err).lower() else f"cannot connect ({one_line(err, 120)})"
        raise EndpointDown(f"{base}: {why}: no server answers there (is it running, and is --endpoint right?)"
                           ) from None
    except httpx.TimeoutException:
        raise EndpointDown(f"{base}: no answer to GET /models within {wait:.0f} s") from None
    except httpx.HTTPError as err:
        raise EndpointError(f"{base}: GET /models failed: {type(err).__name__}: {one_line(err, 120)}") from None
    if r.status_code in (401, 403):
        raise EndpointError(_auth(base, r.status_code, r.reason_phrase))
    if r.status_code in (404, 405):
        raise EndpointError(f"{base}: {r.status_code} {r.reason_phrase} on GET /models: {WRONG_URL}")
    if r.status_code >= 400:
        raise EndpointError(f"{base}: GET /models answered {r.status_code} {r.reason_phrase}: {one_line(r.text, 120)}")
    try:
        data = r.json()["data"]
        served = {m["id"]: m for m in data}
    except (ValueError, KeyError, TypeError):
        kind = r.headers.get("content-type", "no content type").split(";")[0]
        raise EndpointError(f"{base}: GET /models did not answer a model list ({kind}): {WRONG_URL}") from None
    if opts.model not in served:
        names = ", ".join(repr(n) for n in list(served)[:5]) or "nothing"
        raise EndpointError(f"{base}: model {opts.model!r} is not served there (it serves {names}): check --model")
    card = served[opts.model]
    return {k: card.get(k) for k in ("id", "root", "parent", "max_model_len")}


def first_choice(response: Any) -> Any:
    """The first choice of a chat completion, or ``None`` when ``response`` is not one (an HTML page or other text,
    ``{}``, ``choices: []``, a choice without a message): the openai client returns such bodies unvalidated."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
        return None
    return choices[0]


def _fatal(err, base: str) -> str | None:
    """The one-line diagnosis of an HTTP error that no item can get past, else ``None``."""
    if err.status_code in (401, 403):
        return _auth(base, err.status_code, getattr(err.response, "reason_phrase", "") or "")
    if err.status_code in (404, 405):
        text = str(err)
        if "model" in text.lower():
            return f"{base}: 404 model not found ({one_line(getattr(err, 'message', text), 160)}): check --model"
        return f"{base}: {err.status_code} on POST /chat/completions: {WRONG_URL}"
    return None


async def with_retries(create, opts: EndpointOptions, what: str = "/chat/completions"):
    """``await create()`` with the runner's policy: connection errors, 429 and 5xx are retried with backoff (then the
    endpoint is down, or the item fails); a wrong key, URL or model stops the run (``EndpointError``); another 4xx
    fails the item (``ItemError``). ``create`` returns a chat completion; an aborted one is asked again."""
    import openai

    base = opts.base_url.rstrip("/")
    last: Exception | None = None
    for attempt in range(opts.retries + 1):
        if attempt:
            await asyncio.sleep(opts.backoff * 2 ** (attempt - 1))
        try:
            r = await create()
        except openai.APIConnectionError as err:  # refused, reset, timed out: retry, then the server is down
            last = err
            continue
        except openai.APIStatusError as err:
            if (why := _fatal(err, base)) is not None:
                raise EndpointError(why) from None
            if err.status_code == 429 or err.status_code >= 500:
                last = err
                continue
            raise ItemError(f"HTTP {err.status_code}: {one_line(err, 300)}", err.status_code) from None
        except openai.APIError as err:  # an answer the client cannot read as a chat completion
            raise EndpointError(f"{base}: POST {what} answered something that is not a chat "
                                f"completion ({one_line(err, 120)}): {WRONG_URL}") from None
        choice = first_choice(r)
        if choice is None:
            raise EndpointError(f"{base}: POST {what} answered something that is not a chat "
                                f"completion ({one_line(r, 60)!r}): {WRONG_URL}")
        if choice.finish_reason == "abort":  # vLLM cut the answer off (shutting down): not an answer
            last = AbortedAnswer(f"the answer was aborted by the server after "
                                 f"{len(choice.message.content or '')} characters")
            continue
        return r
    if isinstance(last, openai.APIStatusError):
        raise ItemError(f"HTTP {last.status_code} after {opts.retries + 1} tries: {one_line(last, 300)}",
                        last.status_code)
    raise EndpointDown(f"{base} did not answer after {opts.retries + 1} tries: {one_line(last, 200)}")


async def _ask(client, item: dict[str, Any], opts: EndpointOptions, suite: SuiteConfig, system: str | None,
               sem: asyncio.Semaphore) -> dict[str, Any]:
    extra = {"structured_outputs": {"regex": FORMAT_REGEX}} if suite.guided_format else None
    async with sem:
        started = [0.0]

        def create():  # latency is the successful attempt's
            started[0] = time.perf_counter()
            return client.chat.completions.create(
                model=opts.model, messages=messages_for(item, system), max_tokens=suite.max_tokens,
                temperature=suite.temperature, seed=suite.seed, timeout=opts.timeout, extra_body=extra)

        r = await with_retries(create, opts)
        choice = r.choices[0]
        usage = getattr(r, "usage", None)
        return {"response": choice.message.content or "", "finish_reason": choice.finish_reason,
                "latency_s": round(time.perf_counter() - started[0], 4),
                "completion_tokens": usage.completion_tokens if usage else None,
                "prompt_tokens": usage.prompt_tokens if usage else None}


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


async def _run(items: list[dict[str, Any]], suite: SuiteConfig, opts: EndpointOptions, out_dir: Path,
               system: str | None, progress) -> dict[str, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
    sem = asyncio.Semaphore(opts.concurrency)
    lock = asyncio.Lock()
    counts = {"asked": 0, "errors": 0}

    async def one(item: dict[str, Any]) -> None:
        record = {k: v for k, v in item.items() if k != "image"}
        try:
            answer = await _ask(client, item, opts, suite, system, sem)
        except ItemError as err:
            async with lock:
                _append(out_dir / ERRORS, {"id": item["id"], "type": item.get("type"), "status": err.status,
                                           "error": str(err), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                counts["errors"] += 1
                if progress:
                    progress()
                if counts["asked"] == 0 and counts["errors"] >= min(BREAKER, len(items) + 1):
                    raise EndpointError(f"{opts.base_url.rstrip('/')}: the first {counts['errors']} requests all "
                                        f"failed (last: {one_line(err, 160)}); not asking the rest") from None
            return
        async with lock:
            _append(out_dir / PREDICTIONS, record | answer)
            counts["asked"] += 1
            if progress:
                progress()

    await gather_or_cancel([one(item) for item in items], client)
    return counts


async def gather_or_cancel(coroutines: list, client) -> None:
    """Run the requests together; the first failure cancels the rest (and is raised), and the client is closed."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


def ask_all(items: list[dict[str, Any]], suite: SuiteConfig, opts: EndpointOptions, out_dir: Path,
            system_override: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Answer every item not yet in ``predictions.jsonl`` (``errors.jsonl`` is rewritten with this run's failed
    items); return run timings and counts."""
    out = out_dir / PREDICTIONS
    done = {p["id"] for p in kept_answers(out)}
    todo = [it for it in items if it["id"] not in done]
    (out_dir / ERRORS).unlink(missing_ok=True)  # earlier failures are asked again now
    started = time.perf_counter()
    bar = ProgressLine(f"{suite.name}: asking {opts.model}", len(todo), "answers") if show_progress and todo \
        else None
    try:
        if bar:
            bar.start()
        counts = run_interruptible(_run(todo, suite, opts, out_dir, system_prompt(suite, system_override),
                                        (lambda: bar.update(advance=1)) if bar else None)) if todo else \
            {"asked": 0, "errors": 0}
    finally:
        if bar:
            bar.stop()
    return {**counts, "skipped_as_done": len(done & {it["id"] for it in items}),
            "concurrency": opts.concurrency, "wall_seconds": round(time.perf_counter() - started, 2)}
