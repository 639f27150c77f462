"""A suite's closed-set block: class scores of its open questions (``class_scores.py``) turned into AUC and the
decodes at each operating point (``operating_point.py``), the operating point fitted here (``operating_point:
fit``, a validation split) or read from the suite that fitted it, and the report's lines for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermvlm.config import SuiteConfig
from dermvlm.evaluation import class_scores as CS
from dermvlm.evaluation.operating_point import FILE, OperatingPoint, closed_set_metrics, fit

DECODE_NAMES = {"as_generated": "as generated", "class_score_argmax": "class-score argmax (τ 0)",
                "prior_corrected_balanced_accuracy": "prior-corrected for balanced accuracy",
                "prior_corrected_accuracy": "prior-corrected for accuracy"}


def operating_point_source(suite: SuiteConfig, out: Path, base: Path | None, override: str | None) -> Path | None:
    """Where this suite's operating point comes from: ``None`` for none or ``fit`` (fitted here), else the
    ``operating_point.json`` of a path (relative to the suite's folder) or of a sibling suite's output folder."""
    value = override if override is not None else suite.operating_point
    if value in (None, "fit"):
        return None
    path = Path(value)
    if path.suffix == ".json" or path.is_dir():
        return path if path.is_absolute() or base is None or path.exists() else base / path
    return Path(out).parent / value / FILE  # a suite evaluated earlier into the same parent folder


def score(items: list[dict[str, Any]], every: list[dict[str, Any]], suite: SuiteConfig, endpoint, out: Path,
          system: str | None) -> dict[str, Any]:
    """Score the asked items' open questions against the suite's closed label set (while the endpoint is up)."""
    classes = CS.closed_classes(every) if suite.class_scores else {}
    if not classes:
        return {"classes": {}}
    try:
        run = CS.score_all(items, classes, endpoint, out, system, suite.class_answer)
    except CS.ClassScoreError as err:
        return {"classes": classes, "unavailable": str(err)}
    return {"classes": classes, "run": run}


def block(preds: list[dict[str, Any]], scoring: dict[str, Any], suite: SuiteConfig, out: Path, model: str,
          source: Path | None, fit_here: bool) -> dict[str, Any] | None:
    """The ``class_scores`` entry of the open type's metrics (``None`` when the suite has no closed set)."""
    from dermvlm.evaluation.score import open_label_pair
    from dermvlm.knowledge import load_graph

    classes = scoring.get("classes") or {}
    if not classes:
        return None
    if scoring.get("unavailable"):
        return {"unavailable": scoring["unavailable"]}
    kg = load_graph()
    scores = CS.read_scores(out, CS.set_digest(classes, suite.class_answer))
    closed = [p for p in preds if p.get("type") == "open" and p.get("label") in classes]
    rows = [p for p in closed if p["id"] in scores]
    if not rows:
        return {"unavailable": "no item was scored"}
    gold = [p["label"] for p in rows]
    generated = [open_label_pair(p["label"], p["parsed"]["prediction"], kg)[1] for p in rows]
    per_item = [scores[p["id"]] for p in rows]
    labels = list(classes)
    note = None
    if fit_here:
        op = fit(per_item, gold, labels, {"suite": suite.name, "split": suite.split, "model": model})
        op.save(out)
        note = "fitted on this split: in-sample here, apply it to another split"
    elif source is not None and source.is_file():
        op = OperatingPoint.load(source)
        if sorted(op.classes) != sorted(labels):
            op, note = None, f"{source}: fitted on other classes ({', '.join(op.classes)}); not applied"
    else:
        op = None
        if source is not None:
            note = f"no operating point at {source} (evaluate the suite that fits it first)"
    result = closed_set_metrics(gold, generated, per_item, labels, op, suite.bootstrap, suite.seed)
    result["unscored"] = len(closed) - len(rows)  # their requests failed: asked again on the next run
    result["operating_point_source"] = "this split" if fit_here else (str(source) if op is not None else None)
    result["statement"] = op.statement() if op is not None else "class scores uncorrected (no operating point)"
    if note:
        result["note"] = note
    return result


def _auc(entry: dict[str, Any]) -> str:
    return f"{entry['auc']:.3f}" if entry.get("auc") is not None else "– (one class only)"


def report_lines(entry: dict[str, Any] | None) -> list[str]:
    """The report's section for a closed-set block."""
    if not entry:
        return []
    if entry.get("unavailable"):
        return ["", "## Class scores (closed set)", "", f"- not available: {entry['unavailable']}"]
    ci = entry.get("auc_ci95")
    lines = ["", "## Class scores (closed set)", "",
             f"- {entry['n']} open answers scored against {len(entry['classes'])} classes; macro one-vs-rest AUC "
             f"**{_auc(entry)}**" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
             f"- operating point: {entry['statement']}" + (f" ({entry['note']})" if entry.get("note") else ""),
             *([f"- **{entry['unscored']} answers have no class scores** (their requests failed; they are scored "
                "on the next run)"] if entry.get("unscored") else []),
             "", "| decode | τ | accuracy [95% CI] | balanced acc. [95% CI] | macro-F1 [95% CI] |",
             "|---|---|---|---|---|"]
    for key, d in entry["decodes"].items():
        c = d["ci95"]
        cells = [f"{d[m]:.3f} [{c[m][0]:.3f}, {c[m][1]:.3f}]" if c.get(m) else f"{d[m]:.3f}"
                 for m in ("accuracy", "balanced_accuracy", "macro_f1")]
        tau = f"{d['tau']:+.2f}" if "tau" in d else "–"
        lines.append(f"| {DECODE_NAMES.get(key, key)} | {tau} | " + " | ".join(cells) + " |")
    return lines


def summary(entry: dict[str, Any]) -> str:
    """One terminal line: AUC, the operating point and the balanced decode's figures."""
    if entry.get("unavailable"):
        return f"class scores: not available ({entry['unavailable']})"
    d = entry["decodes"].get("prior_corrected_balanced_accuracy") or entry["decodes"]["class_score_argmax"]
    return (f"class scores: AUC {_auc(entry)}; {entry['statement']}: accuracy {d['accuracy']:.3f}, balanced "
            f"{d['balanced_accuracy']:.3f}, macro-F1 {d['macro_f1']:.3f}")
