"""Ask an OpenAI-compatible endpoint every item of a suite: concurrent async requests, timeouts, retries with
backoff, and ``predictions.jsonl`` appended as answers arrive, so a rerun after a crash or a server restart skips
the items already answered. A dead server stops the run (nothing is recorded for unanswered items)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.config import SuiteConfig
from dermvlm.recipes.text import SYSTEM_PROMPT

FORMAT_REGEX = r"<think>[^<]{1,1500}</think><answer>[^<]{1,120}</answer>"


class EndpointDown(RuntimeError):
    """The endpoint stopped answering (connection refused or timeouts after every retry)."""


@dataclass
class EndpointOptions:
    base_url: str
    model: str
    api_key: str = "EMPTY"
    concurrency: int = 8
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.5


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
    """Predictions so far; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


async def _ask(client, item: dict[str, Any], opts: EndpointOptions, suite: SuiteConfig, system: str | None,
               sem: asyncio.Semaphore) -> dict[str, Any]:
    import openai

    extra = {"structured_outputs": {"regex": FORMAT_REGEX}} if suite.guided_format else None
    async with sem:
        last: Exception | None = None
        for attempt in range(opts.retries + 1):
            started = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=opts.model, messages=messages_for(item, system), max_tokens=suite.max_tokens,
                    temperature=suite.temperature, seed=suite.seed, timeout=opts.timeout, extra_body=extra)
                usage = r.usage
                return {"response": r.choices[0].message.content or "", "finish_reason": r.choices[0].finish_reason,
                        "latency_s": round(time.perf_counter() - started, 4),
                        "completion_tokens": usage.completion_tokens if usage else None,
                        "prompt_tokens": usage.prompt_tokens if usage else None, "error": None}
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as err:
                last = err
                await asyncio.sleep(opts.backoff * 2 ** attempt)
            except openai.APIStatusError as err:  # 4xx: the request itself is bad; record it, do not retry
                return {"response": "", "finish_reason": None, "latency_s": round(time.perf_counter() - started, 4),
                        "completion_tokens": 0, "prompt_tokens": 0,
                        "error": f"HTTP {err.status_code}: {str(err)[:300]}"}
        raise EndpointDown(f"{opts.base_url} did not answer after {opts.retries + 1} tries: {last}")


async def _run(items: list[dict[str, Any]], suite: SuiteConfig, opts: EndpointOptions, out: Path,
               system: str | None, progress) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
    sem = asyncio.Semaphore(opts.concurrency)
    lock = asyncio.Lock()
    written = 0

    async def one(item: dict[str, Any]) -> None:
        nonlocal written
        answer = await _ask(client, item, opts, suite, system, sem)
        record = {k: v for k, v in item.items() if k != "image"} | answer
        async with lock:
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            written += 1
            if progress:
                progress()

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    return written


def ask_all(items: list[dict[str, Any]], suite: SuiteConfig, opts: EndpointOptions, out_dir: Path,
            system_override: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Answer every item not yet in ``predictions.jsonl``; return run timings."""
    out = out_dir / "predictions.jsonl"
    done = {p["id"] for p in read_predictions(out)}
    todo = [it for it in items if it["id"] not in done]
    started = time.perf_counter()
    bar = task = None
    if show_progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("asking {task.fields[model]}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), transient=True)
        bar.start()
        task = bar.add_task("ask", total=len(todo), model=opts.model)
    try:
        written = asyncio.run(_run(todo, suite, opts, out, system_prompt(suite, system_override),
                                   (lambda: bar.advance(task)) if bar else None)) if todo else 0
    finally:
        if bar:
            bar.stop()
    return {"asked": written, "skipped_as_done": len(done & {it["id"] for it in items}),
            "wall_seconds": round(time.perf_counter() - started, 2)}
