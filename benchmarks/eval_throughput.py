"""Evaluation throughput: the 2,005-item DermaMNIST suite through vLLM on the nano model, and vLLM vs transformers
``generate`` on the same model and prompts at 16 concurrent requests.

Run: ``.venv/bin/python benchmarks/eval_throughput.py [--model runs/nano-cpu/dpo/model]`` (make demo first, or pass
any model folder). Targets: the suite in <= 5 minutes on CPU; vLLM >= 10x transformers in requests/s.
Writes ``benchmarks/results/eval_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "eval_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "runs" / "nano-cpu" / "dpo" / "model"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--skip-suite", action="store_true", help="only vLLM vs transformers")
    a = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import openai
    import torch
    from PIL import Image

    from dermvlm.config import ModelSpec, SuiteConfig, load_config
    from dermvlm.evaluation.items import build_items
    from dermvlm.evaluation.runner import EndpointOptions, image_url
    from dermvlm.evaluation.suite import run_suite
    from dermvlm.manifest import versions
    from dermvlm.models.loading import load_model
    from dermvlm.serving.server import ServeOptions, VLLMServer

    model = Path(a.model)
    if not (model / "config.json").exists():
        raise SystemExit(f"{model}: no model folder; run `make demo` first or pass --model")
    # the row times answering the questions; class scores (more requests per open item) are off here
    suite = load_config(ROOT / "eval" / "dermamnist_test.yaml", SuiteConfig).model_copy(update={"class_scores": False})
    res: dict = {"model": str(model)}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        items = build_items(suite.model_copy(update={"types": ["open"]}), d / "items", base=ROOT / "eval")
        sample = items[: a.requests]
        with VLLMServer(ServeOptions(model=str(model), dtype="float32", served_model_name="m",
                                     log_file=str(d / "server.log"))) as srv:
            t = time.perf_counter()
            endpoint = EndpointOptions(srv.base_url, "m", concurrency=16)
            result = None if a.skip_suite else run_suite(suite, d / "suite", endpoint=endpoint, base=ROOT / "eval",
                                                         show_progress=False)
            if result is not None:
                res["suite_items"] = result["metrics"]["n"]
                res["suite_seconds"] = round(time.perf_counter() - t, 1)
                res["suite_metrics"] = {k: {m: v.get(m) for m in ("accuracy", "balanced_accuracy", "macro_f1",
                                                                   "unparsable_rate")}
                                        for k, v in result["metrics"]["types"].items()}

            async def burst() -> float:
                client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
                sem = asyncio.Semaphore(16)

                async def one(it):
                    async with sem:
                        await client.chat.completions.create(
                            model="m", max_tokens=a.max_tokens, temperature=0, messages=[{"role": "user", "content": [
                                {"type": "image_url", "image_url": {"url": image_url(it["image"])}},
                                {"type": "text", "text": it["question"]}]}])

                t0 = time.perf_counter()
                await asyncio.gather(*[one(it) for it in sample])
                await client.close()
                return time.perf_counter() - t0

            vllm_s = asyncio.run(burst())
        hf, processor = load_model(ModelSpec(name_or_path=str(model), dtype="float32"), model)
        hf.eval()
        import io

        t0 = time.perf_counter()
        for i in range(0, len(sample), 16):
            chunk = sample[i:i + 16]
            texts = [processor.apply_chat_template([{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": it["question"]}]}], tokenize=False,
                add_generation_prompt=True) for it in chunk]
            imgs = [Image.open(io.BytesIO(it["image"])).convert("RGB") for it in chunk]
            inputs = processor(text=texts, images=imgs, return_tensors="pt", padding=True)
            with torch.no_grad():
                hf.generate(**inputs, max_new_tokens=a.max_tokens, do_sample=False)
        hf_s = time.perf_counter() - t0
    res.update(vllm_requests_per_s=round(len(sample) / vllm_s, 2),
               transformers_requests_per_s=round(len(sample) / hf_s, 2),
               ratio_vllm_over_transformers=round(hf_s / vllm_s, 2), requests=len(sample),
               max_tokens=a.max_tokens, concurrency=16, targets={"suite_seconds": 300, "ratio": 10},
               machine={"platform": platform.platform(), "cpus": os.cpu_count()}, versions=versions(),
               date=datetime.now(UTC).isoformat(timespec="seconds"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("versions", "machine")}, indent=2))


if __name__ == "__main__":
    main()
