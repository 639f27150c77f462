"""Run one suite against an endpoint (or a model folder served for the occasion): items → answers → metrics →
``metrics.json``, ``predictions.jsonl``, ``errors.jsonl``, ``cache_key.json``, ``report.md`` and plots in the output
folder. A rerun continues from ``predictions.jsonl`` only when its cache key (``evaluation.cache``) is the same."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from dermvlm.config import SuiteConfig
from dermvlm.datasets.split_assignment import SplitTable
from dermvlm.evaluation import cache, closed_set
from dermvlm.evaluation.external import file_digest
from dermvlm.evaluation.items import build_items, corrupted, data_path
from dermvlm.evaluation.membership import check_held_out, write_members
from dermvlm.evaluation.report import plots, write_report
from dermvlm.evaluation.runner import FORMAT_REGEX, EndpointOptions, ask_all, kept_answers, probe, read_predictions
from dermvlm.evaluation.runner import system_prompt as system_text
from dermvlm.evaluation.score import score_predictions
from dermvlm.io import atomic_write_text, claim
from dermvlm.knowledge import load_graph
from dermvlm.manifest import versions


def run_suite(suite: SuiteConfig, out: str | Path, endpoint: EndpointOptions | None = None,
              serve_model: str | Path | None = None, serve_options: dict[str, Any] | None = None,
              overrides: list[dict] | None = None, base: Path | None = None, limit: int | None = None,
              system_prompt: str | None = None, show_progress: bool = True, fresh: bool = False,
              reset_on_mismatch: bool = False, clean_items: list[dict[str, Any]] | None = None,
              train_data: Path | None = None, judge: EndpointOptions | None = None,
              operating_point: str | None = None) -> dict[str, Any]:
    """Evaluate and write the outputs. With ``judge`` (an OpenAI-compatible endpoint and model), open-ended answers
    are also graded by that LLM judge (``evaluation.judge``; verdicts cached in ``judge.jsonl``). A rerun continues
    from ``predictions.jsonl`` when the cache key matches,
    else raises ``CacheMismatch`` (``reset_on_mismatch``: start over instead); ``fresh`` starts over anyway.
    ``limit`` 0 or ``None``: every item. Items whose request failed are counted in ``result["errors"]``.
    ``clean_items``: the suite's items already built (uncorrupted, all of them), to skip building them again.
    ``members.json`` records which images the suite asks about; with ``train_data`` (the built recipe a model was
    trained on) the images and groups its ``splits.csv`` lists keep their split, and an item whose image is in its
    train split stops the run (``SplitOverlapError``) before any request. Open questions with a closed label set
    also get class scores (``closed_set``): AUC and decodes at the operating point ``operating_point`` (or the
    suite's) names, or one fitted here (``fit``)."""
    out = Path(out)
    if serve_model is None and endpoint is None:
        raise ValueError("give an endpoint (URL and model name) or a model folder to serve")
    opts = None
    if serve_model is not None:  # a folder that cannot be served stops here, before anything is built or written
        opts = serve_options_for(serve_model, serve_options, out / "server.log")
        opts.validate()
    judge_card = probe(judge) if judge is not None else None  # a wrong judge stops here, before any question
    # a benchmark file: only the rows asked are read, and its digest stands for its items whatever --limit reads
    items_key = file_digest(data_path(suite, base)) if suite.format in ("tsv", "jsonl", "csv") else None
    if clean_items is None and suite.format != "recipe":  # a bad row stops here, before any write
        first = (limit or suite.limit) if items_key else None
        clean_items = build_items(suite.model_copy(update={"limit": first, "corruption": None}), out / "items",
                                  overrides, base)
    out.mkdir(parents=True, exist_ok=True)
    claim(out, "eval")
    override = system_prompt
    system = system_text(suite, override)
    suite = suite.model_copy(update={"limit": limit or suite.limit,
                                     **({"system_prompt": override} if override is not None else {})})
    every = clean_items if clean_items is not None else build_items(
        suite.model_copy(update={"limit": None, "corruption": None}), out / "items", overrides, base,
        SplitTable.of_build(train_data) if train_data is not None else None)
    if every and (clean_items is None or train_data is not None):  # which images, on the clean pixels
        hashes = write_members(out, every)
        if train_data is not None:
            check_held_out(suite.name, every, hashes, Path(train_data))
    if suite.corruption:  # only the items to be asked need corrupted pixels; all of them name the suite
        every = corrupted(every, suite.corruption.name, suite.corruption.severity, suite.seed, suite.limit)
    items = every[: suite.limit] if suite.limit else every
    if not items:
        raise ValueError(f"suite {suite.name}: no items (split {suite.split!r} is empty)")

    def start_over_or_check(key: dict[str, Any]) -> None:
        if fresh:
            cache.clear(out)
        cache.check_and_store(out, key, reset_on_mismatch)

    if opts is not None:
        from dermvlm.serving.server import VLLMServer

        folder = Path(opts.model)
        model = opts.model_name
        key = cache.make_key(model=model, model_id={"id": model, "root": str(folder), "parent": None,
                                                    "max_model_len": opts.max_model_len},
                             endpoint="", serve={"dtype": opts.dtype, "max_model_len": opts.max_model_len},
                             weights_dir=folder, suite=suite, system_prompt=system, items=every,
                             format_regex=FORMAT_REGEX, items_key=items_key)
        start_over_or_check(key)  # before the server starts: a refusal costs nothing
        server = VLLMServer(opts)
        try:
            server.start()
            where = {"base_url": server.base_url, "model": server.model_name, "api_key": opts.api_key or "EMPTY"}
            endpoint = dataclasses.replace(endpoint, **where) if endpoint else EndpointOptions(**where)
            probe(endpoint)
            timing = ask_all(items, suite, endpoint, out, override, show_progress)
            scoring = closed_set.score(items, every, suite, endpoint, out, system)
        finally:
            _stop(server)
    else:
        assert endpoint is not None
        card = probe(endpoint)  # a wrong URL, key or model name stops here, before anything is written
        root = card.get("root")
        local = root if root and cache.is_loopback(endpoint.base_url) and Path(root).is_dir() else None
        key = cache.make_key(model=endpoint.model, model_id=card, endpoint=endpoint.base_url, weights_dir=local,
                             suite=suite, system_prompt=system, items=every, format_regex=FORMAT_REGEX,
                             items_key=items_key)
        start_over_or_check(key)
        timing = ask_all(items, suite, endpoint, out, override, show_progress)
        scoring = closed_set.score(items, every, suite, endpoint, out, system)
    by_id = {it["id"]: it for it in items}
    answers: dict[str, dict[str, Any]] = {}
    for p in kept_answers(out / cache.PREDICTIONS):
        if p.get("id") in by_id and p["id"] not in answers:  # the gold fields come from the current items
            answers[p["id"]] = p | {k: v for k, v in by_id[p["id"]].items() if k != "image"}
    preds = [answers[i] for i in by_id if i in answers]
    failed = {e["id"]: e for e in read_predictions(out / cache.ERRORS) if e.get("id") in by_id}
    failed = {i: e for i, e in failed.items() if i not in answers}
    judged = None
    if judge is not None and any(p["type"] == "open_text" for p in preds):
        from dermvlm.evaluation.judge import judge_predictions

        judged = judge_predictions(preds, judge, out, judge_card)
    metrics = score_predictions(preds, load_graph(), suite.bootstrap, suite.seed)
    metrics["errors"] = len(failed)
    source = closed_set.operating_point_source(suite, out, base, operating_point)
    fit_here = (operating_point or suite.operating_point) == "fit"
    closed = closed_set.block(preds, scoring, suite, out, endpoint.model, source, fit_here)
    if closed is not None and "open" in metrics["types"]:
        metrics["types"]["open"]["class_scores"] = closed
    if scoring.get("run"):
        timing = timing | {"class_scores": scoring["run"]}
    result = {"suite": suite.name, "description": suite.description, "model": endpoint.model,
              "endpoint": endpoint.base_url, "run": timing, "n_items": len(items), "errors": len(failed),
              "error_examples": [e["error"] for e in list(failed.values())[:3]],
              "settings": key, "metrics": metrics, "suite_config": suite.model_dump(), "versions": versions(),
              **({"judge": judged} if judged else {})}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, default=str) + "\n")
    plots(result, out)
    write_report(result, out)
    return result


def serve_options_for(serve_model: str | Path, serve_options: dict[str, Any] | None, log_file: Path):
    """The ``ServeOptions`` for evaluating a model folder (served under its stage's name)."""
    from dermvlm.serving.server import ServeOptions, ServerError

    folder = Path(serve_model)
    if folder.exists():
        folder = folder.resolve()
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or folder.is_absolute() or str(folder).startswith("."):
        raise ServerError(f"model folder not found: {serve_model}")  # else a hub name, on a connected machine
    name = f"{folder.parent.name}" if folder.name == "model" else None  # runs/<run>/<stage>/model → <stage>
    return ServeOptions(model=str(folder), log_file=str(log_file), served_model_name=name, **(serve_options or {}))


def _stop(server) -> None:
    """Stop the server even if a signal (SIGTERM → KeyboardInterrupt) arrives while it is being stopped."""
    interrupted = False
    for _ in range(3):
        try:
            server.stop()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
