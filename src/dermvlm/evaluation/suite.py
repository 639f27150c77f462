"""Run one suite against an endpoint (or a model folder served for the occasion): items → answers → metrics →
``metrics.json``, ``predictions.jsonl``, ``report.md`` and plots in the output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dermvlm.config import SuiteConfig
from dermvlm.evaluation.items import build_items
from dermvlm.evaluation.report import plots, write_report
from dermvlm.evaluation.runner import EndpointOptions, ask_all, read_predictions
from dermvlm.evaluation.score import score_predictions
from dermvlm.io import atomic_write_text
from dermvlm.knowledge import load_graph


def run_suite(suite: SuiteConfig, out: str | Path, endpoint: EndpointOptions | None = None,
              serve_model: str | Path | None = None, serve_options: dict[str, Any] | None = None,
              overrides: list[dict] | None = None, base: Path | None = None, limit: int | None = None,
              system_prompt: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate and write the outputs; a rerun continues from ``predictions.jsonl``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if limit:
        suite = suite.model_copy(update={"limit": limit})
    items = build_items(suite, out / "items", overrides, base)
    if not items:
        raise ValueError(f"suite {suite.name}: no items (split {suite.split!r} is empty)")
    if serve_model is not None:
        from dermvlm.serving.server import ServeOptions, VLLMServer

        folder = Path(serve_model)
        name = f"{folder.parent.name}" if folder.name == "model" else None  # runs/<run>/<stage>/model → <stage>
        opts = ServeOptions(model=str(folder), log_file=str(out / "server.log"), served_model_name=name,
                            **(serve_options or {}))
        with VLLMServer(opts) as server:
            endpoint = EndpointOptions(base_url=server.base_url, model=server.model_name,
                                       api_key=opts.api_key or "EMPTY",
                                       concurrency=endpoint.concurrency if endpoint else 8)
            timing = ask_all(items, suite, endpoint, out, system_prompt, show_progress)
    elif endpoint is not None:
        timing = ask_all(items, suite, endpoint, out, system_prompt, show_progress)
    else:
        raise ValueError("give an endpoint (URL and model name) or a model folder to serve")
    ids = {it["id"] for it in items}
    preds = [p for p in read_predictions(out / "predictions.jsonl") if p["id"] in ids]
    metrics = score_predictions(preds, load_graph(), suite.bootstrap, suite.seed)
    result = {"suite": suite.name, "description": suite.description, "model": endpoint.model,
              "endpoint": endpoint.base_url, "run": timing, "metrics": metrics,
              "suite_config": suite.model_dump()}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=str) + "\n")
    plots(result, out)
    write_report(result, out)
    return result
