"""Class scores, two ways, side by side on one served model: the whole answer's log-probability read from vLLM's
prompt log-probabilities (one request per item and class; the scorer before v3's cut) and the choice tokens read
with ``logprob_token_ids`` (``evaluation/class_scores.py``: one request per node of the candidates' token tree, one
per item for DermaMNIST's seven classes). Same items, same server, warmed up first; the record gives seconds per
item, the ratio, and how far the two scores agree (macro AUC of each, argmax agreement, largest class-probability
difference), from a trained model (a base the learning benchmark keeps):

    python benchmarks/learning/run.py --only full/base/0 --keep-model /tmp/base-s0
    python benchmarks/class_score_cost.py --model /tmp/base-s0 [--limit 1003]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "class_score_cost.json"
SUITE = ROOT / "benchmarks" / "learning" / "dermamnist_val.yaml"


def whole_answer_scores(items: list[dict[str, Any]], classes: dict[str, str], opts) -> dict[str, dict[str, float]]:
    """Item id → {label: log P(whole answer)}: one prompt-log-probability request per item and class."""
    import openai

    from dermvlm.evaluation.class_scores import ANSWER_TEMPLATE, candidate_tokens
    from dermvlm.evaluation.runner import messages_for

    texts = {label: ANSWER_TEMPLATE.replace("{name}", name) for label, name in classes.items()}

    async def run() -> dict[str, dict[str, float]]:
        tokens = dict(zip(texts, await candidate_tokens(opts, list(texts.values())), strict=True))
        client = openai.AsyncOpenAI(base_url=opts.base_url, api_key=opts.api_key, max_retries=0)
        sem = asyncio.Semaphore(opts.concurrency)

        async def one(item: dict[str, Any], label: str) -> tuple[str, str, float]:
            messages = [*messages_for(item, None), {"role": "assistant", "content": texts[label]}]
            async with sem:
                r = await client.chat.completions.create(
                    model=opts.model, messages=messages, max_tokens=1, temperature=0.0,
                    extra_body={"continue_final_message": True, "add_generation_prompt": False, "prompt_logprobs": 0,
                                "return_token_ids": True})
            ids, logprobs = r.model_extra["prompt_token_ids"], r.model_extra["prompt_logprobs"]
            n = len(tokens[label])
            assert list(ids[-n:]) == tokens[label], "the candidate is not the end of the prompt"
            return item["id"], label, sum(e[str(t)]["logprob"] for t, e in zip(ids[-n:], logprobs[-n:], strict=True))

        try:
            rows = await asyncio.gather(*(one(it, label) for it in items for label in classes))
        finally:
            await client.close()
        out: dict[str, dict[str, float]] = {}
        for item_id, label, value in rows:
            out.setdefault(item_id, {})[label] = value
        return out

    return asyncio.run(run())


def agreement(gold: list[str], a: list[dict[str, float]], b: list[dict[str, float]], classes: list[str]) -> dict:
    from dermvlm.evaluation.operating_point import _matrix, macro_auc, probabilities

    pa, pb = probabilities(_matrix(a, classes)), probabilities(_matrix(b, classes))
    return {"auc_whole_answer": round(macro_auc(gold, pa, classes)[0], 4),
            "auc_choice_tokens": round(macro_auc(gold, pb, classes)[0], 4),
            "argmax_agreement": round(float((pa.argmax(1) == pb.argmax(1)).mean()), 4),
            "max_abs_probability_difference": round(float(abs(pa - pb).max()), 4),
            "mean_abs_probability_difference": round(float(abs(pa - pb).mean()), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a merged model folder (see above)")
    ap.add_argument("--limit", type=int, default=None, help="the first N val items (default: all)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from dermvlm.config import SuiteConfig, load_config
    from dermvlm.evaluation import class_scores as CS
    from dermvlm.evaluation.items import build_items
    from dermvlm.evaluation.runner import EndpointOptions
    from dermvlm.manifest import versions
    from dermvlm.serving.server import ServeOptions, VLLMServer

    if not (args.model / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model folder (config.json); see this script's help")
    suite = load_config(SUITE, SuiteConfig)
    work = Path(tempfile.mkdtemp(prefix="class-score-cost-"))
    try:
        every = build_items(suite.model_copy(update={"types": ["open"]}), work / "items", base=SUITE.parent)
        items = [it for it in every if it["type"] == "open"][: args.limit]
        classes = CS.closed_classes(every)
        with VLLMServer(ServeOptions(model=str(args.model), dtype="float32", served_model_name="m", max_model_len=512,
                                     log_file=str(work / "server.log"))) as srv:
            opts = EndpointOptions(srv.base_url, "m", concurrency=args.concurrency)
            warm = items[:16]
            whole_answer_scores(warm, classes, opts)
            CS.score_all(warm, classes, opts, _fresh(work / "warm"), None)
            t = time.perf_counter()
            whole = whole_answer_scores(items, classes, opts)
            whole_s = time.perf_counter() - t
            t = time.perf_counter()
            run = CS.score_all(items, classes, opts, _fresh(work / "choice"), None)
            choice_s = time.perf_counter() - t
            choice = CS.read_scores(work / "choice", CS.set_digest(classes, CS.ANSWER_TEMPLATE))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ids = [it["id"] for it in items]
    record = {
        "model": str(args.model), "suite": str(SUITE.relative_to(ROOT)), "items": len(items),
        "classes": len(classes), "concurrency": args.concurrency,
        "whole_answer": {"requests_per_item": len(classes), "seconds": round(whole_s, 2),
                         "ms_per_item": round(1000 * whole_s / len(items), 1)},
        "choice_tokens": {"requests_per_item": run["requests_per_item"], "seconds": round(choice_s, 2),
                          "ms_per_item": round(1000 * choice_s / len(items), 1), "errors": run["errors"]},
        "speedup": round(whole_s / choice_s, 2),
        "agreement": agreement([it["label"] for it in items], [whole[i] for i in ids], [choice[i] for i in ids],
                               list(classes)),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "versions": versions(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("whole_answer", "choice_tokens", "speedup", "agreement")}, indent=1))
    print(f"wrote {args.out}")


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


if __name__ == "__main__":
    main()
