"""The evaluation's results in a model card: ``model-index`` metrics (one per suite, question type and metric, as the
Hub reads them) and markdown tables (headline metrics, fairness by stratum, robustness under corruptions), read from
a pipeline run's ``eval/SUITE/`` folders that evaluated the run's final model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def run_evaluations(run: Path, model_key: str | None = None) -> dict[str, dict[str, Any]]:
    """``{suite: metrics.json}`` of ``run/eval/*`` (only those of the model ``model_key`` names, when given)."""
    found = {}
    for folder in sorted((Path(run) / "eval").glob("*/")):
        metrics, key = folder / "metrics.json", folder / "model_key.txt"
        if not metrics.is_file():
            continue
        if model_key is not None and key.is_file() and key.read_text().strip() != model_key:
            continue  # an earlier model's answers
        result = json.loads(metrics.read_text())
        robustness = folder / "robustness.json"
        if robustness.is_file():
            result["robustness"] = json.loads(robustness.read_text())
        found[folder.name] = result
    return found


def eval_results(evaluations: dict[str, dict[str, Any]]) -> list:
    """``huggingface_hub.EvalResult`` per suite, question type and headline metric."""
    from huggingface_hub import EvalResult

    out = []
    for suite, result in evaluations.items():
        for kind, t in (result.get("metrics") or {}).get("types", {}).items():
            for metric in METRICS:
                if isinstance(t.get(metric), int | float):
                    out.append(EvalResult(task_type="image-text-to-text", task_name="dermatology VQA",
                                          dataset_type=f"dermvlm/{suite}", dataset_name=f"{suite} ({kind})",
                                          dataset_config=kind,
                                          dataset_split=str((result.get("suite_config") or {}).get("split", "test")),
                                          metric_type=metric, metric_value=round(float(t[metric]), 4),
                                          metric_name=f"{kind} {metric.replace('_', ' ')}"))
    return out


def _ci(t: dict[str, Any], key: str) -> str:
    ci = (t.get("ci95") or {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def results_markdown(evaluations: dict[str, dict[str, Any]]) -> str:
    """The card's "Evaluation" section: headline metrics with 95% intervals, fairness and robustness tables."""
    if not evaluations:
        return ""
    lines = ["## Evaluation", "", "| suite | type | n | accuracy | balanced accuracy | macro-F1 |",
             "|---|---|---|---|---|---|"]
    for suite, result in evaluations.items():
        for kind, t in (result.get("metrics") or {}).get("types", {}).items():
            if "accuracy" not in t:
                continue
            cells = [f"{t[k]:.3f}{_ci(t, k)}" if isinstance(t.get(k), int | float) else "" for k in METRICS]
            lines.append(f"| {suite} | {kind} | {t['n']} | " + " | ".join(cells) + " |")
    for suite, result in evaluations.items():
        m = result.get("metrics") or {}
        primary = m.get("types", {}).get(m.get("primary") or "", {})
        for name, f in (primary.get("fairness") or {}).items():
            if not f.get("groups"):
                continue
            lines += ["", f"**Fairness: {suite}, by {name}** ({m['primary']}; groups under {f['min_n']} items are "
                      "not ranked)", "", f"| {name} | n | accuracy | balanced accuracy |", "|---|---|---|---|"]
            lines += [f"| {g} | {v['n']} | {v['accuracy']:.3f} | {v['balanced_accuracy']:.3f}"
                      f"{_ci(v, 'balanced_accuracy')} |" for g, v in f["groups"].items()]
        rob = result.get("robustness")
        if rob:
            rel = rob.get("mean_relative_balanced_accuracy") or {}
            lines += ["", f"**Robustness: {suite}** (MedMNIST-C corruptions; clean balanced accuracy "
                      f"{rob['clean']['balanced_accuracy']:.3f})", "",
                      "| corruption | mean relative balanced accuracy |", "|---|---|"]
            lines += [f"| {c} | {v:.3f} |" for c, v in sorted(rel.items(), key=lambda kv: kv[1])]
    lines += ["", "Numbers from `dermvlm eval` on the suites named; they describe a model on a benchmark, not a "
              "diagnostic device.", ""]
    return "\n".join(lines)


def with_results(card_text: str, evaluations: dict[str, dict[str, Any]], model_name: str) -> str:
    """``card_text`` (a model card with YAML front matter) with ``model-index`` and the Evaluation section."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text)
    results = eval_results(evaluations)
    if results:
        card.data.eval_results = results
        card.data.model_name = model_name
    body = card.text.split("## Evaluation")[0].rstrip() + "\n\n"
    marker = "**Research use only.**"
    section = results_markdown(evaluations)
    if marker in body:  # the results go before the limits, which stay last
        head, tail = body.split(marker, 1)
        body = head + section + "\n" + marker + tail
    else:
        body += section
    return f"---\n{card.data.to_yaml()}\n---\n{body}"
