"""Foundation timings on this machine: nano build, SFT steps/s (full and LoRA), merge, vLLM start-up and latency.

Run: ``.venv/bin/python benchmarks/foundation_timings.py`` (about 2 minutes on 2 cores). Writes
``benchmarks/results/foundation_timings.json`` with machine info, versions and date.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = Path(__file__).resolve().parent / "results" / "foundation_timings.json"


def main() -> None:
    import openai

    from dermvlm.config import ModelSpec, RecipeConfig, load_config, make_stage
    from dermvlm.datasets.sample import load_sample_records
    from dermvlm.manifest import versions
    from dermvlm.models.nano import build_nano
    from dermvlm.recipes.build import build
    from dermvlm.recipes.text import OPEN_QUESTIONS
    from dermvlm.serving.client import image_messages
    from dermvlm.serving.server import ServeOptions, VLLMServer
    from dermvlm.training.common import recipe_dataset
    from dermvlm.training.sft import run_sft

    res: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        import transformers  # noqa: F401 - imported before timing the build

        t = time.perf_counter()
        base = build_nano(d / "base", "nano", 0)
        res["nano_build_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        build_nano(d / "micro", "micro", 0)
        res["micro_build_s"] = round(time.perf_counter() - t, 2)
        records = load_sample_records()
        build(load_config(Path(__file__).resolve().parents[1] / "data_recipes" / "sample.yaml", RecipeConfig),
              d / "data", progress=False)
        ds = recipe_dataset(d / "data", ["open_diagnosis"])
        spec = ModelSpec(name_or_path=str(base), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0})
        for name, lora, steps in (("full", False, 100), ("lora", True, 40)):
            r = run_sft(make_stage(name=name, use_lora=lora, trl={"max_steps": steps, "learning_rate": 3e-3}),
                        spec, base if name == "full" else d / "full" / "model", ds, d / name)
            train = next(h for h in r.log_history if "train_runtime" in h)
            res[f"sft_{name}_steps_per_s_batch4"] = round(steps / train["train_runtime"], 1)
            res[f"sft_{name}_stage_total_s"] = round(r.seconds, 2)
        images = [r.image for r in records[:16]]
        t = time.perf_counter()
        with VLLMServer(ServeOptions(model=str(d / "lora" / "model"), dtype="float32")) as srv:
            res["vllm_startup_s"] = round(time.perf_counter() - t, 1)
            client = openai.OpenAI(base_url=srv.base_url, api_key="x")
            lat = []
            for img in images[:6]:
                t = time.perf_counter()
                client.chat.completions.create(model=srv.model_name, messages=image_messages(img, OPEN_QUESTIONS[0]),
                                               max_tokens=24, temperature=0)
                lat.append(time.perf_counter() - t)
            res["vllm_first_request_s"] = round(lat[0], 3)
            res["vllm_warm_request_median_s"] = round(statistics.median(lat[1:]), 3)
            aclient = openai.AsyncOpenAI(base_url=srv.base_url, api_key="x")

            async def burst() -> float:
                t0 = time.perf_counter()
                await asyncio.gather(*[
                    aclient.chat.completions.create(model=srv.model_name, max_tokens=24, temperature=0,
                                                    messages=image_messages(img, OPEN_QUESTIONS[0]))
                    for img in images
                ])
                return time.perf_counter() - t0

            res["vllm_16_concurrent_req_per_s"] = round(16 / asyncio.run(burst()), 1)
    res["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                      "omp_num_threads": os.environ["OMP_NUM_THREADS"]}
    res["versions"] = versions()
    res["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("versions", "machine")}, indent=2))


if __name__ == "__main__":
    main()
