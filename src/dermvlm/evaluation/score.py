"""From predictions to metrics: parse every answer, then accuracy, balanced accuracy, macro-F1 with bootstrap CIs,
per-class precision/recall, confusion matrix, top-k from the stated differential, hierarchical accuracy per taxonomy
level, format compliance, KG factuality, malignancy sensitivity/specificity, abstention, strata, latency."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dermvlm.evaluation import metrics as M
from dermvlm.evaluation.parsing import parse
from dermvlm.knowledge import KGScorer, KnowledgeGraph
from dermvlm.knowledge.scorer import knowledge_error_rate

RISKY = ("malignant", "premalignant")


def _level(kg: KnowledgeGraph, node: str | None, depth: int) -> str | None:
    if node is None or not kg.has(node):
        return None
    path = kg.category_path(node)
    return path[depth] if len(path) > depth else None


def score_predictions(preds: list[dict[str, Any]], kg: KnowledgeGraph, bootstrap: int = 1000, seed: int = 0,
                      scorer: KGScorer | None = None) -> dict[str, Any]:
    """Metrics by question type, plus an overall block for the primary type (mcq, else open, else the first);
    ``scorer`` grades factuality (default: the grounded KG scorer of ``kg``)."""
    scorer = scorer or KGScorer(kg)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in preds:
        parsed = parse(p.get("response"), p, kg)
        p["parsed"] = {"prediction": parsed.prediction, "mode": parsed.mode, "reason": parsed.reason,
                       "format_ok": parsed.format_ok, "differential": parsed.differential}
        by_type[p["type"].split(":")[0]].append(p)
    out: dict[str, Any] = {"n": len(preds), "types": {}}
    for kind, rows in sorted(by_type.items()):
        out["types"][kind] = _score_type(kind, rows, kg, scorer, bootstrap, seed)
    primary = next((t for t in ("mcq", "open", "open_text", "abstention", "yes_no") if t in out["types"]), None)
    out["primary"] = primary
    lat = [p["latency_s"] for p in preds if p.get("latency_s") is not None and not p.get("error")]
    tokens = [(p.get("completion_tokens") or 0, p["latency_s"]) for p in preds if p.get("latency_s")]
    rate = sum(t for t, _ in tokens) / max(1e-9, sum(s for _, s in tokens)) if tokens else None
    out["latency"] = {"p50_s": M.percentile(lat, 50), "p95_s": M.percentile(lat, 95),
                      "tokens_per_s_per_request": round(rate, 2) if rate is not None else None}
    out["errors"] = sum(1 for p in preds if p.get("error"))
    out["format_compliance"] = round(sum(p["parsed"]["format_ok"] for p in preds) / max(1, len(preds)), 4)
    return out


def open_label_pair(label: str, prediction: str | None, kg: KnowledgeGraph) -> tuple[str, str]:
    """(gold, predicted) classes of an open answer: a prediction the gold class covers counts as the gold class;
    anything else keeps its own name, and no answer is ``UNPARSABLE``."""
    node = prediction if prediction not in (None, "abstain") else None
    if node and kg.covers(label, node):
        return label, label
    return label, node or M.UNPARSABLE


def fairness_groups(rows: list[dict[str, Any]]) -> dict[str, list[str | list[str]]]:
    """The stratifications every report carries: labelled Fitzpatrick band, ITA tone group (for images without a
    Fitzpatrick label too), body site, and artefact tags (an item may have several; "none" when it has none).
    A stratification no item has is left out."""
    out: dict[str, list[str | list[str]]] = {
        "fitzpatrick": [r.get("fitzpatrick_group") or "" for r in rows],
        "tone": [r.get("tone_group") or "" for r in rows],
        "site": [r.get("site") or "" for r in rows],
        "artefact": [(list(r["artefacts"]) or ["none"]) if r.get("artefacts") is not None else [] for r in rows],
    }
    return {k: v for k, v in out.items() if any(v)}


def _score_type(kind: str, rows: list[dict[str, Any]], kg: KnowledgeGraph, scorer: KGScorer, bootstrap: int,
                seed: int) -> dict[str, Any]:
    res: dict[str, Any] = {"n": len(rows)}
    modes = defaultdict(int)
    for r in rows:
        modes[r["parsed"]["mode"]] += 1
    res["parse_modes"] = dict(modes)
    res["unparsable_rate"] = round(modes["unparsable"] / len(rows), 4)
    if kind == "open_text":
        from dermvlm.evaluation.text_metrics import text_scores

        res.update(text_scores([r["parsed"]["prediction"] or "" for r in rows], [str(r["answer"]) for r in rows],
                               bootstrap, seed))
        judged = [r for r in rows if r.get("judged")]
        if judged:  # the LLM judge's verdicts (evaluation.judge); unparsable verdicts count as not correct
            yes = [r["judge"] == "yes" for r in judged]
            res["judge"] = {"n": len(judged), "accuracy": round(sum(yes) / len(judged), 4),
                            "unparsable_rate": round(sum(r["judge"] is None for r in judged) / len(judged), 4),
                            "ci95": M.bootstrap_ci(lambda t, p: sum(p) / len(p), yes, yes, bootstrap, seed + 5)}
        categories = [r.get("category") or "" for r in rows]
        if any(categories):
            res["strata"] = {"category": M.strata(categories, [bool(x) for x in res.pop("_exact")])}
        res.pop("_exact", None)
        return res
    if kind == "abstention":
        abstained = [r["parsed"]["prediction"] == "abstain" for r in rows]
        res["abstention_rate"] = round(sum(abstained) / len(rows), 4)
        res["accuracy"] = res["abstention_rate"]
        return res
    y_true, y_pred, correct = [], [], []
    predicted_nodes: list[str | None] = []
    for r in rows:
        pred = r["parsed"]["prediction"]
        if kind == "mcq":
            options = r.get("options") or []
            node_name = options["ABCDEFGHIJ".index(pred)] if pred and "ABCDEFGHIJ".index(pred) < len(options) else None
            ok = pred == r["answer"]
            y_true.append(r["label_name"])
            y_pred.append(node_name if node_name else M.UNPARSABLE)
            node = _node_of(kg, node_name)
        elif kind == "open":
            gold, got = open_label_pair(r["label"], pred, kg)
            node = pred if pred not in (None, "abstain") else None
            ok = got == gold
            y_true.append(gold)
            y_pred.append(got)
        else:  # yes_no, attribute
            ok = pred is not None and str(pred).strip().lower().rstrip(".") == str(r["answer"]).strip().lower()
            y_true.append(str(r["answer"]))
            y_pred.append(str(pred) if pred is not None else M.UNPARSABLE)
            node = None
        correct.append(ok)
        predicted_nodes.append(node)
    res.update(
        accuracy=round(M.accuracy(y_true, y_pred), 4), balanced_accuracy=round(M.balanced_accuracy(y_true, y_pred), 4),
        macro_f1=round(M.macro_f1(y_true, y_pred), 4),
        ci95={"accuracy": M.bootstrap_ci(M.accuracy, y_true, y_pred, bootstrap, seed),
              "balanced_accuracy": M.bootstrap_ci(M.balanced_accuracy, y_true, y_pred, bootstrap, seed + 1),
              "macro_f1": M.bootstrap_ci(M.macro_f1, y_true, y_pred, bootstrap, seed + 2)},
        per_class=M.per_class(y_true, y_pred), confusion=M.confusion(y_true, y_pred),
        abstention_rate=round(sum(r["parsed"]["prediction"] == "abstain" for r in rows) / len(rows), 4),
        strata={"fitzpatrick": M.strata([r.get("fitzpatrick_group") or "" for r in rows], correct),
                "site": M.strata([r.get("site") or "" for r in rows], correct),
                **({"category": M.strata([r.get("category") or "" for r in rows], correct)}
                   if any(r.get("category") for r in rows) else {})},
        fairness={name: M.fairness(groups, y_true, y_pred, bootstrap, seed + 3)
                  for name, groups in fairness_groups(rows).items()},
    )
    if kind in ("mcq", "open"):
        gold_nodes = [r["label"] if kg.has(r["label"]) else _node_of(kg, r["label"]) for r in rows]
        levels = {}
        for depth in (1, 2, 3):
            pairs = [(_level(kg, g, depth), _level(kg, p, depth)) for g, p in zip(gold_nodes, predicted_nodes,
                                                                                  strict=True)]
            scored = [(g, p) for g, p in pairs if g is not None]
            if scored:
                levels[f"level_{depth}"] = round(sum(g == p for g, p in scored) / len(scored), 4)
        res["hierarchical_accuracy"] = levels
        known = [(g, p) for g, p in zip(gold_nodes, predicted_nodes, strict=True) if g]  # external items may
        if known:  # name no disease the graph knows
            truth = [kg.malignancy(g) in RISKY for g, _ in known]
            said = [bool(p) and kg.malignancy(p) in RISKY for _, p in known]
            res["malignancy"] = M.sensitivity_specificity(truth, said)
    if kind == "open":
        top3 = []
        for r, node in zip(rows, predicted_nodes, strict=True):
            stated = ([node] if node else []) + [d for d in r["parsed"]["differential"] if d != node]
            top3.append(any(kg.covers(r["label"], d) for d in stated[:3]))
        res["top3_from_differential"] = round(sum(top3) / len(rows), 4)
        breakdowns = [scorer.score(r.get("response"), r["label"], site=r.get("site") or None,
                                   fitzpatrick=r.get("fitzpatrick") or None, facts=r.get("record_facts"))
                      for r in rows]

        def per_answer(field: str) -> float:
            return round(sum(len(getattr(b, field)) for b in breakdowns) / len(rows), 4)

        res["kg_factuality"] = {
            "mean_score": round(sum(b.score for b in breakdowns) / len(rows), 4),
            "contradicted_claims_per_answer": per_answer("contradicted"),
            "record_supported_claims_per_answer": per_answer("supported"),
            "stereotype_claims_per_answer": per_answer("consistent"),
            "typical_claims_per_answer": round(sum(
                len(b.typical_supported) + len(b.typical_contradicted) + len(b.typical_unverified)
                for b in breakdowns) / len(rows), 4),
            "knowledge_error_rate": round(sum(knowledge_error_rate(b) for b in breakdowns) / len(rows), 4),
            "hallucination_rate": round(sum(bool(b.unknown_diseases) for b in breakdowns) / len(rows), 4),
            "referral_when_malignancy_in_play": round(
                sum(b.referral_advised for b in breakdowns if b.malignancy_in_play)
                / max(1, sum(b.malignancy_in_play for b in breakdowns)), 4),
        }
    return res


def _node_of(kg: KnowledgeGraph, name: str | None) -> str | None:
    if not name:
        return None
    try:
        return kg.resolve(name)
    except KeyError:
        return None
