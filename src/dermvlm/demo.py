"""The demo: train the configured stages on the bundled sample, serve the result with vLLM, ask one question."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dermvlm.config import RunConfig
from dermvlm.datasets.sample import load_sample_records
from dermvlm.pipeline import run_pipeline

log = logging.getLogger(__name__)


@dataclass
class DemoAnswer:
    model_dir: Path
    image: str
    question: str
    answer: str
    label: str
    server_start_seconds: float
    total_seconds: float


def run_demo(cfg: RunConfig, source: str = "<config>") -> DemoAnswer:
    """Stages → merged model → vLLM on ``cfg.serve.host`` → one chat completion with an image → stop."""
    from openai import OpenAI

    from dermvlm.serving.client import ask_about_image
    from dermvlm.serving.server import ServeOptions, VLLMServer

    started = time.perf_counter()
    model_dir = run_pipeline(cfg, source)
    records = load_sample_records()
    record = records[0]
    if cfg.demo.image:
        matches = [r for r in records if r.image.endswith(cfg.demo.image)]
        if not matches:
            raise ValueError(f"{source}: demo.image: no bundled sample image named {cfg.demo.image!r}")
        record = matches[0]
    s = cfg.serve
    options = ServeOptions(
        model=str(model_dir), host=s.host, port=s.port, api_key=s.api_key, dtype=s.dtype,
        max_model_len=s.max_model_len, kv_cache_memory=s.kv_cache_memory, startup_timeout=s.startup_timeout,
        served_model_name=cfg.name, seed=cfg.seed, log_file=str(model_dir.parent.parent / "serve.log"),
    )
    log.info("starting vLLM on %s:%s for %s", s.host, s.port or "(free port)", model_dir)
    t0 = time.perf_counter()
    with VLLMServer(options) as server:
        ready = time.perf_counter() - t0
        client = OpenAI(base_url=server.base_url, api_key=s.api_key or "EMPTY", max_retries=2, timeout=120)
        response = ask_about_image(client, server.model_name, record.image, cfg.demo.question,
                                   max_tokens=cfg.demo.max_tokens)
    return DemoAnswer(
        model_dir=model_dir, image=record.image, question=cfg.demo.question,
        answer=response.choices[0].message.content or "", label=record.label,
        server_start_seconds=ready, total_seconds=time.perf_counter() - started,
    )
