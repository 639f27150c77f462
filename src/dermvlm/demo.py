"""The demo: the whole pipeline on the config, then the served model's evaluation and one question about an image."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.config import RunConfig
from dermvlm.datasets.sample import load_sample_records
from dermvlm.manifest import Manifest
from dermvlm.pipeline import run_dir, run_pipeline, serve_and_evaluate

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
    reports: dict[str, Any] = field(default_factory=dict)


def check_demo_image_held_out(image: str | Path, data_dir: Path, source: str) -> None:
    """Refuse a demo question about an image the model was trained on (the run's train split)."""
    from dermvlm.evaluation.membership import SplitOverlapError, check_held_out, image_phash

    name = Path(image).name
    try:
        check_held_out("demo", [{"id": name}], [image_phash(Path(image).read_bytes())], data_dir)
    except SplitOverlapError:
        raise ValueError(f"{source}: demo.image: {name} is in the run's training split ({data_dir}); pick an image "
                         "of the recipe's test split") from None


def run_demo(cfg: RunConfig, source: str = "<config>") -> DemoAnswer:
    """Pipeline (data → stages → merged model) → vLLM on ``cfg.serve.host`` → suites → one chat completion → stop."""
    from openai import OpenAI

    from dermvlm.serving.client import ask_about_image

    started = time.perf_counter()
    model_dir = run_pipeline(cfg, source, evaluate=False)
    records = load_sample_records()
    record = records[0]
    if cfg.demo.image:
        matches = [r for r in records if r.image.endswith(cfg.demo.image)]
        if not matches:
            raise ValueError(f"{source}: demo.image: no bundled sample image named {cfg.demo.image!r}")
        record = matches[0]
    check_demo_image_held_out(record.image, run_dir(cfg) / "data", source)
    t0 = time.perf_counter()
    ready: dict[str, float] = {}

    def ask(server) -> str:
        ready.setdefault("seconds", time.perf_counter() - t0)
        client = OpenAI(base_url=server.base_url, api_key=cfg.serve.api_key or "EMPTY", max_retries=2, timeout=120)
        r = ask_about_image(client, server.model_name, record.image, cfg.demo.question,
                            max_tokens=cfg.demo.max_tokens)
        return r.choices[0].message.content or ""

    key = Manifest(run_dir(cfg)).data.get("final_model_key", str(model_dir))
    reports, answer = serve_and_evaluate(cfg, model_dir, key, source, during=ask)
    log.info("outputs in %s", run_dir(cfg))
    return DemoAnswer(model_dir=model_dir, image=record.image, question=cfg.demo.question, answer=answer,
                      label=record.label, server_start_seconds=ready.get("seconds", 0.0),
                      total_seconds=time.perf_counter() - started, reports=reports)
