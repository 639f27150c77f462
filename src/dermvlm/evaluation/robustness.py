"""The robustness sweep of ``dermvlm eval SUITE --robustness``: the suite clean and under each corruption at each
severity (``robustness:`` in the suite, default MedMNIST-C's 15 dermatoscopy corruptions x 5 severities), one
served model for all runs, each run a normal evaluation folder (cached and resumable) under ``OUT/<name>-<k>``;
then ``robustness.json``, ``robustness.md`` and ``robustness.png`` with accuracy and balanced accuracy per
corruption and severity, absolute and relative to clean."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dermvlm.config import CorruptionSpec, RobustnessSpec, SuiteConfig
from dermvlm.evaluation.items import build_items
from dermvlm.evaluation.membership import check_held_out, write_members
from dermvlm.evaluation.runner import EndpointOptions
from dermvlm.io import atomic_write_text, claim

CLEAN = "clean"


def runs(spec: RobustnessSpec) -> list[tuple[str, CorruptionSpec | None]]:
    """``(folder name, corruption)`` of every run, clean first."""
    return [(CLEAN, None)] + [(f"{c}-{k}", CorruptionSpec(name=c, severity=k)) for c in spec.corruptions
                              for k in spec.severities]


def run_robustness(suite: SuiteConfig, out: str | Path, endpoint: EndpointOptions | None = None,
                   serve_model: str | Path | None = None, serve_options: dict[str, Any] | None = None,
                   overrides: list[dict] | None = None, base: Path | None = None, limit: int | None = None,
                   system_prompt: str | None = None, fresh: bool = False, show_progress: bool = True,
                   train_data: Path | None = None) -> dict[str, Any]:
    """Every run of the sweep, then the summary files; returns the summary. With ``train_data``, the clean items
    are checked once against that recipe's train split before the server starts."""
    from dermvlm.evaluation.suite import _stop, run_suite, serve_options_for

    out = Path(out)
    spec = suite.robustness or RobustnessSpec()
    limit = limit or spec.limit or suite.limit
    server = None
    if serve_model is not None:
        from dermvlm.serving.server import VLLMServer

        server = VLLMServer(serve_options_for(serve_model, serve_options, out / "server.log"))
    results: dict[str, dict[str, Any]] = {}
    clean_items = build_items(suite.model_copy(update={"limit": None, "corruption": None}), out / "items",
                              overrides, base)  # built once, corrupted per run
    out.mkdir(parents=True, exist_ok=True)
    claim(out, "eval")
    hashes = write_members(out, clean_items)
    if train_data is not None:
        check_held_out(suite.name, clean_items, hashes, Path(train_data))
    try:
        if server is not None:
            server.start()
            where = {"base_url": server.base_url, "model": server.model_name, "api_key": server.options.api_key
                     or "EMPTY"}
            endpoint = dataclasses.replace(endpoint, **where) if endpoint else EndpointOptions(**where)
        assert endpoint is not None
        for name, corruption in runs(spec):
            # class scores (K requests per item) only on the clean run: the sweep compares decoded answers
            one = suite.model_copy(update={"corruption": corruption,
                                           **({"class_scores": False} if corruption is not None else {})})
            results[name] = run_suite(one, out / name, endpoint, overrides=overrides, base=base, limit=limit,
                                      system_prompt=system_prompt, show_progress=show_progress, fresh=fresh,
                                      clean_items=clean_items)
    finally:
        if server is not None:
            _stop(server)
    summary = summarise(results, spec)
    atomic_write_text(out / "robustness.json", json.dumps(summary, indent=2) + "\n")
    plot(summary, out / "robustness.png")
    atomic_write_text(out / "robustness.md", markdown(summary))
    return summary


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    m = result["metrics"]
    t = m["types"].get(m["primary"] or "", {})
    return {"n": t.get("n", 0), "accuracy": t.get("accuracy"), "balanced_accuracy": t.get("balanced_accuracy"),
            "errors": result.get("errors", 0)}


def summarise(results: dict[str, dict[str, Any]], spec: RobustnessSpec) -> dict[str, Any]:
    clean = _headline(results[CLEAN])
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for c in spec.corruptions:
        for k in spec.severities:
            h = _headline(results[f"{c}-{k}"])
            for metric in ("accuracy", "balanced_accuracy"):
                base_v = clean[metric]
                h[f"{metric}_relative"] = round(h[metric] / base_v, 4) if base_v and h[metric] is not None else None
            table.setdefault(c, {})[str(k)] = h
    mean_rel = {c: round(sum(v["balanced_accuracy_relative"] or 0 for v in row.values()) / len(row), 4)
                for c, row in table.items()}
    worst = min(mean_rel, key=mean_rel.get) if mean_rel else None
    primary = results[CLEAN]["metrics"]["primary"]
    return {"suite": results[CLEAN]["suite"], "model": results[CLEAN]["model"], "primary": primary,
            "clean": clean, "corruptions": table, "mean_relative_balanced_accuracy": mean_rel,
            "worst_corruption": worst, "severities": list(spec.severities),
            "errors": sum(r.get("errors", 0) for r in results.values())}


def markdown(summary: dict[str, Any]) -> str:
    sev = summary["severities"]
    clean = summary["clean"]
    lines = [f"# Robustness: {summary['suite']} — {summary['model']}", "",
             f"Balanced accuracy ({summary['primary']}) per corruption and severity, relative to clean "
             f"(clean: accuracy {clean['accuracy']:.3f}, balanced accuracy {clean['balanced_accuracy']:.3f}, "
             f"n={clean['n']}). Worst corruption on average: **{summary['worst_corruption']}**.", "",
             "| corruption | " + " | ".join(f"severity {k}" for k in sev) + " | mean relative |",
             "|---|" + "---|" * (len(sev) + 1)]
    for c, row in summary["corruptions"].items():
        cells = [f"{row[str(k)]['balanced_accuracy']:.3f} ({row[str(k)]['balanced_accuracy_relative'] or 0:.2f})"
                 for k in sev]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {summary['mean_relative_balanced_accuracy'][c]:.2f} |")
    lines += ["", "![robustness](robustness.png)", "",
              "Research use only: these numbers describe a model on a benchmark, not a diagnostic device.", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dermvlm.evaluation.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sev = summary["severities"]
    for c, row in summary["corruptions"].items():
        ax.plot(sev, [row[str(k)]["balanced_accuracy"] for k in sev], marker="o", label=c, linewidth=1)
    ax.axhline(summary["clean"]["balanced_accuracy"], color="black", linestyle="--", label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel(f"balanced accuracy ({summary['primary']})")
    ax.set_xticks(sev)
    ax.set_title(f"robustness: {summary['model']}", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    return save_figure(fig, path)
