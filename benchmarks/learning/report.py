"""Tabulate and plot the learning benchmark v3 from the committed run records (``records.py``; the finished runs
under ``runs/learning/`` get fresh records first): ``benchmarks/results/learning.json``, a markdown table
(``benchmarks/results/learning.md``, also written into docs/BENCHMARKS.md) and plots
(``benchmarks/results/learning/*.png``).

Every run (VLM arm or CNN) is read at three decodes of the same model: **as generated** (the VLM's answer; the CNN's
argmax), and **prior-corrected** ``argmax score − τ·log prior`` with τ chosen on that run's own val split for
balanced accuracy, and for accuracy (``evaluation/operating_point.py``; never on test); AUC is macro one-vs-rest on
the class scores. Per regime and arm: per-seed values, the mean with a seed-level 95% t interval and an item
bootstrap of the mean. Comparisons are paired (same seeds, same test items by image key, VLM and CNN alike): a
claim "A beats B" **holds** only with at least two seeds, the seed-level interval above 0 **and** the paired item
bootstrap interval above 0, all records made by one code version (``reversed``: both below 0); one seed is never a
claim. The DermIQ arm's DPO is judged on the KG factuality suite: contradicted claims and knowledge errors per
answer after its DPO minus before it (the SFT model it started from), paired per item and over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ABLATIONS, BASE_VARIANTS, BUDGET, CNN_EPOCHS, MAIN_ARMS, REGIMES, ROOT
from records import RECORDS, export, load_regime

from dermvlm.evaluation import metrics as M
from dermvlm.evaluation.operating_point import fit, log_prior, probabilities

# Published DermaMNIST test figures at 28 px (ACC, AUC; None: not reported): MedMNIST v2 (Yang et al., Scientific
# Data 2023, Table: models from scratch; ../shared/data/dermamnist/SOURCES.md) and MedMNIST+ (Doerrich et al. 2025,
# github.com/sdoerrich97/rethinking-model-prototyping-MedMNISTPlus BENCHMARK.md: ImageNet-pretrained, the 28 px
# image zero-padded to 224, no augmentation, mean of 3 seeds).
PUBLISHED = [
    ("MedMNIST v2: ResNet-18 (28), from scratch", 0.735, 0.917),
    ("MedMNIST v2: ResNet-18 (224), from scratch", 0.754, 0.920),
    ("MedMNIST v2: Google AutoML Vision", 0.768, None),
    ("MedMNIST+: VGG16 end-to-end, ImageNet-pretrained (28)", 0.7658, 0.9269),
    ("MedMNIST+: ResNet-18 end-to-end, ImageNet-pretrained (28)", 0.7338, 0.8835),
    ("MedMNIST+: ViT-B/16 end-to-end, ImageNet-pretrained (28)", 0.7440, 0.9062),
    ("MedMNIST+: DINO ViT-B/16 linear probe (28)", 0.7578, 0.9187),
]
TARGETS = {"best_arm_auc": 0.92, "best_arm_accuracy": 0.76, "best_arm_balanced_accuracy": 0.58,
           "grpo_plus_over_sft_balanced": 0.02, "dermiq_within_grpo_plus": -0.01, "max_params": 20_000_000}
ARM_ORDER = ["base", *MAIN_ARMS, *ABLATIONS, *BASE_VARIANTS, "base_ssl-grpo_plus"]
CNNS = {"cnn": "CNN anchor: ResNet-18, stride-2 stem, from scratch (training s = CPU s)",
        "cnn_ssl": "CNN anchor after SimCLR on the unlabelled rest of the train split (training s: both, CPU s)"}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
DECODES = {"as_generated": "as generated", "balanced": "prior-corrected for balanced accuracy",
           "accuracy": "prior-corrected for accuracy"}
# (a, b) pairs and the statistics each is judged on: (decode, metric), or ("scores", "auc").
STATS = [("balanced", "balanced_accuracy"), ("scores", "auc"), ("as_generated", "accuracy"),
         ("accuracy", "accuracy")]
COMPARISONS = [("grpo_plus", "sft_balanced"), ("grpo_plus", "sft_only"), ("sft_balanced", "sft_only"),
               ("grpo_plus", "plain_grpo"), ("grpo_nothink", "grpo_plus"), ("dermiq", "grpo_plus"),
               ("grpo_plus", "base")]
Record = dict[str, Any]


# ------------------------------------------------------------------ one run at each decode


_VIEWS: dict[tuple[int, str], tuple[Record, dict[str, Any]]] = {}


def view(rec: Record, split: str = "test") -> dict[str, Any]:
    """``_view``, computed once per record and split (the cache holds the record, so its id stays its own)."""
    key = (id(rec), split)
    if key not in _VIEWS or _VIEWS[key][0] is not rec:
        _VIEWS[key] = (rec, _view(rec, split))
    return _VIEWS[key][1]


def _view(rec: Record, split: str = "test") -> dict[str, Any]:
    """A run's split, encoded for fast statistics: item keys, gold (``t``: over the gold classes; ``ts``: over the
    score classes), the prediction of each decode (``p``; the prior-corrected ones need class scores and a val
    split to fit τ on), and class probabilities at τ 0 (``probs``)."""
    import numpy as np

    part = rec[split]
    gold = list(part["gold"])
    gold_classes = sorted(set(gold))
    t, p, k = M.encode(gold, part["pred"], gold_classes)
    out: dict[str, Any] = {"ids": list(part["ids"]), "gold": gold, "t": t, "k": k, "p": {"as_generated": p},
                           "probs": None, "ts": None, "ks": 0, "pred": {"as_generated": list(part["pred"])}}
    scores, classes = part.get("scores"), part.get("classes")
    if not scores or not classes or any(s is None for s in scores):
        return out
    matrix = np.array(scores, dtype=float)
    out["probs"] = probabilities(matrix)
    out["ts"], _, out["ks"] = M.encode(gold, gold, list(classes)) if set(gold) <= set(classes) else (None, None, 0)
    val = rec.get("val") or {}
    if val.get("scores") and all(s is not None for s in val["scores"]):
        rows = [dict(zip(val["classes"], s, strict=True)) for s in val["scores"]]
        keep = [i for i, g in enumerate(val["gold"]) if g in classes]
        op = fit([rows[i] for i in keep], [val["gold"][i] for i in keep], list(classes))
        lp = log_prior(op.prior, list(classes))
        for decode, objective in (("balanced", "balanced_accuracy"), ("accuracy", "accuracy")):
            pred = [classes[i] for i in (matrix - op.tau[objective] * lp).argmax(1)]
            out["pred"][decode] = pred
            out["p"][decode] = M.encode(gold, pred, gold_classes)[1]
        out["tau"] = op.tau
    return out


def fast_auc(t, probs, k: int) -> float | None:
    """Macro one-vs-rest AUC on encoded gold ``t`` (rank form, ties averaged): classes with positives and
    negatives."""
    import numpy as np
    from scipy.stats import rankdata

    aucs = []
    for c in range(k):
        pos = t == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            ranks = rankdata(probs[:, c])
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


def stat_value(v: dict[str, Any], stat: tuple[str, str], idx=None) -> float | None:
    """One statistic of a run view on its items (``idx``: a resample of item positions)."""
    decode, metric = stat
    if decode == "scores":
        if v["probs"] is None or v["ts"] is None:
            return None
        return fast_auc(v["ts"] if idx is None else v["ts"][idx], v["probs"] if idx is None else v["probs"][idx],
                        v["ks"])
    p = v["p"].get(decode)
    if p is None:
        return None
    return M.integer_metric(metric, v["t"] if idx is None else v["t"][idx], p if idx is None else p[idx], v["k"])


# ------------------------------------------------------------------ intervals


def seed_ci(values: list[float]) -> list[float] | None:
    """95% Student-t interval of the mean over seeds (None for fewer than two seeds)."""
    import numpy as np
    from scipy import stats

    if len(values) < 2:
        return None
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return [round(float(v.mean() - half), 4), round(float(v.mean() + half), 4)]


def _percentiles(draws: list[float]) -> list[float] | None:
    import numpy as np

    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)] if draws else None


def item_ci(views: list[dict[str, Any]], stat: tuple[str, str], n: int = 1000, seed: int = 0) -> list[float] | None:
    """Bootstrap interval of the mean over runs: each draw resamples every run's items and averages."""
    import numpy as np

    if not views or any(stat_value(v, stat) is None for v in views):
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        values = [stat_value(v, stat, rng.integers(0, len(v["t"]), len(v["t"]))) for v in views]
        if all(x is not None for x in values):
            draws.append(sum(values) / len(values))
    return _percentiles(draws)


def code_of(rec: Record) -> str:
    return (rec.get("code") or {}).get("code") or "unknown"


# ------------------------------------------------------------------ arms


def summarize(runs: dict[int, Record], n_boot: int = 1000) -> dict[str, Any]:
    """Per-seed test statistics at every decode, their mean, seed-level and item-bootstrap intervals."""
    views = {s: view(r) for s, r in sorted(runs.items())}
    stats = [("scores", "auc"), *((d, m) for d in DECODES for m in METRICS)]
    out: dict[str, Any] = {"seeds": sorted(views), "codes": sorted({code_of(r) for r in runs.values()}),
                           "stats": {}}
    for stat in stats:
        values = [stat_value(v, stat) for v in views.values()]
        if any(x is None for x in values):
            continue
        key = f"{stat[0]}:{stat[1]}"
        out["stats"][key] = {"per_seed": [round(x, 4) for x in values], "mean": round(sum(values) / len(values), 4),
                             "seed_ci95": seed_ci(values), "item_ci95": item_ci(list(views.values()), stat, n_boot)}
    out["tau"] = {s: v.get("tau") for s, v in views.items()}
    out["per_class_recall_balanced"] = _recall(views, "balanced" if all(
        "balanced" in v["pred"] for v in views.values()) else "as_generated")
    val = [view(r, "val") for r in runs.values() if r.get("val")]
    if len(val) == len(views):
        out["val_auc"] = _mean([stat_value(v, ("scores", "auc")) for v in val])
        out["val_balanced_accuracy_as_generated"] = _mean([stat_value(v, ("as_generated", "balanced_accuracy"))
                                                            for v in val])
    seconds = [_seconds(r) for r in runs.values()]
    out["training_seconds_mean"] = round(sum(seconds) / len(seconds), 1)
    out["per_seed"] = {s: {"stages": r.get("stages"), "code": r.get("code"), "source": r.get("source", "run"),
                           **{k: r[k] for k in ("steps", "epochs", "selected_step", "cpu_seconds") if k in r}}
                       for s, r in sorted(runs.items())}
    return out


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return round(sum(got) / len(got), 4) if got and len(got) == len(values) else None


def _seconds(rec: Record) -> float:
    if rec.get("kind") == "cnn":  # with its SimCLR pretraining where it had one (cnn_ssl)
        return float(rec.get("cpu_seconds") or rec.get("train_seconds") or 0) + float(
            (rec.get("ssl") or {}).get("cpu_seconds") or 0)
    return float(sum((s or {}).get("seconds") or 0 for s in (rec.get("stages") or {}).values()))


def _recall(views: dict[int, dict[str, Any]], decode: str) -> dict[str, float]:
    classes = sorted({c for v in views.values() for c in v["gold"]})
    out = {}
    for c in classes:
        vals = []
        for v in views.values():
            pairs = [(g, p) for g, p in zip(v["gold"], v["pred"][decode], strict=True) if g == c]
            vals.append(sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0)
        out[c] = round(sum(vals) / len(vals), 4)
    return out


# ------------------------------------------------------------------ paired comparisons


def _aligned(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two views restricted to their shared items, in one order (by image key)."""
    import numpy as np

    shared = sorted(set(a["ids"]) & set(b["ids"]))

    def take(v: dict[str, Any]) -> dict[str, Any]:
        pos = {k: i for i, k in enumerate(v["ids"])}
        idx = np.array([pos[k] for k in shared], dtype=int)
        sub = {"ids": shared, "gold": [v["gold"][i] for i in idx], "k": v["k"], "ks": v["ks"]}
        sub["t"], sub["p"] = v["t"][idx], {d: p[idx] for d, p in v["p"].items()}
        sub["probs"] = v["probs"][idx] if v["probs"] is not None else None
        sub["ts"] = v["ts"][idx] if v["ts"] is not None else None
        return sub

    return take(a), take(b)


def verdict(d: dict[str, Any]) -> str:
    """``holds`` / ``reversed`` only with ≥ 2 seeds, one code version, and both intervals on one side of 0."""
    if len(d["per_seed"]) < 2:
        return "one seed: no claim"
    if len(d["codes"]) > 1:
        return "mixed code versions: no claim (rerun)"
    s, i = d["seed_ci95"], d["item_ci95"]
    if s and i and s[0] > 0 and i[0] > 0:
        return "holds"
    if s and i and s[1] < 0 and i[1] < 0:
        return "reversed"
    return "not shown"


def paired(a_runs: dict[int, Record], b_runs: dict[int, Record], stat: tuple[str, str], n: int = 1000
           ) -> dict[str, Any] | None:
    """Mean over shared seeds of stat(a) − stat(b) on shared test items: per-seed values, the seed-level t interval,
    a paired item bootstrap (the same resampled items for both) and the verdict."""
    import numpy as np

    seeds = sorted(set(a_runs) & set(b_runs))
    pairs = [_aligned(view(a_runs[s]), view(b_runs[s])) for s in seeds]
    if not pairs or any(stat_value(a, stat) is None or stat_value(b, stat) is None for a, b in pairs):
        return None
    per_seed = [round(stat_value(a, stat) - stat_value(b, stat), 4) for a, b in pairs]
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(n):
        total = 0.0
        for a, b in pairs:
            idx = rng.integers(0, len(a["gold"]), len(a["gold"]))
            total += stat_value(a, stat, idx) - stat_value(b, stat, idx)
        draws.append(total / len(pairs))
    out = {"stat": f"{stat[0]}:{stat[1]}", "seeds": seeds, "per_seed": per_seed,
           "delta": round(sum(per_seed) / len(per_seed), 4), "seed_ci95": seed_ci(per_seed),
           "item_ci95": _percentiles(draws), "items": [len(a["gold"]) for a, _ in pairs],
           "codes": sorted({code_of(r) for s in seeds for r in (a_runs[s], b_runs[s])})}
    out["verdict"] = verdict(out)
    return out


def factuality(runs: dict[int, Record], n: int = 1000) -> dict[str, Any] | None:
    """After DPO − before DPO (the DermIQ arm's SFT model) on the KG factuality suite, per answer: contradicted
    claims and knowledge-error rate, paired by item within a seed, with seed-level and item intervals."""
    import numpy as np

    per = {s: r["factuality"] for s, r in sorted(runs.items())
           if {"final", "before_dpo"} <= set(r.get("factuality") or {})}
    if not per:
        return None
    out: dict[str, Any] = {"seeds": sorted(per)}
    for field in ("contradicted", "knowledge_error_rate"):
        rows = []
        for f in per.values():
            after = dict(zip(f["final"]["ids"], f["final"][field], strict=True))
            before = dict(zip(f["before_dpo"]["ids"], f["before_dpo"][field], strict=True))
            shared = sorted(set(after) & set(before))
            rows.append((np.array([after[k] for k in shared], float), np.array([before[k] for k in shared], float)))
        per_seed = [round(float(a.mean() - b.mean()), 4) for a, b in rows]
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(n):
            total = 0.0
            for a, b in rows:
                i = rng.integers(0, len(a), len(a))
                total += float(a[i].mean() - b[i].mean())
            draws.append(total / len(rows))
        d = {"per_seed": per_seed, "delta": round(sum(per_seed) / len(per_seed), 4), "seed_ci95": seed_ci(per_seed),
             "item_ci95": _percentiles(draws), "before": [round(float(b.mean()), 4) for _, b in rows],
             "after": [round(float(a.mean()), 4) for a, _ in rows],
             "codes": sorted({code_of(r) for s, r in runs.items() if s in per})}
        # fewer errors after DPO is the claim: flip the sign for the verdict
        flipped = {**d, "seed_ci95": [-x for x in reversed(d["seed_ci95"])] if d["seed_ci95"] else None,
                   "item_ci95": [-x for x in reversed(d["item_ci95"])] if d["item_ci95"] else None}
        d["verdict"] = {"holds": "DPO lowers it", "reversed": "DPO raises it"}.get(verdict(flipped), verdict(flipped))
        out[field] = d
    return out


# ------------------------------------------------------------------ a regime


def regime_result(regime: str, records: dict[str, Record], plots_dir: Path, n_boot: int = 1000) -> dict[str, Any]:
    arms: dict[str, dict[int, Record]] = {}
    for rec in records.values():
        arms.setdefault(rec.get("arm") or "cnn", {})[rec["seed"]] = rec
    summary = {arm: summarize(runs, n_boot) for arm, runs in arms.items()}
    comparisons: dict[str, Any] = {}
    pairs = [*COMPARISONS, *((a, "grpo_plus") for a in ABLATIONS), *((v, "base") for v in BASE_VARIANTS),
             ("base_ssl-grpo_plus", "grpo_plus"), *((a, "cnn") for a in ["base", *MAIN_ARMS]),
             ("base_ssl-grpo_plus", "cnn_ssl"), ("cnn_ssl", "cnn")]
    for a, b in pairs:
        if a in arms and b in arms:
            for stat in STATS:
                d = paired(arms[a], arms[b], stat, n_boot)
                if d is not None:
                    comparisons[f"{a} − {b} ({stat[0]}:{stat[1]})"] = d
    out: dict[str, Any] = {"arms": summary, "comparisons": comparisons,
                           "factuality": factuality(arms["dermiq"], n_boot) if "dermiq" in arms else None}
    bases = arms.get("base", {})
    out["vision_probe"] = {s: (r["stages"].get("vision", {}).get("probe") or {}) for s, r in sorted(bases.items())}
    first = next(iter(bases.values()), None)
    if first is not None:
        out["train_images"] = first["data"].get("train_images")
        out["parameters"] = first["data"].get("parameters")
    any_run = next((r for runs in arms.values() for r in runs.values()), None)
    if any_run is not None:
        gold = any_run["test"]["gold"]
        top = max(set(gold), key=gold.count)
        out["majority_class"] = {"class": top, "accuracy": round(gold.count(top) / len(gold), 4),
                                 "classes": len(set(gold))}
    out["sources"] = {rec["run"]: rec.get("source", "run") for rec in records.values()}
    out["plots"] = plot_regime(regime, arms, summary, plots_dir)
    return out


# ------------------------------------------------------------------ the targets

BEST_ARM_STATS = {"best_arm_auc": ["scores:auc"], "best_arm_accuracy": ["as_generated:accuracy", "accuracy:accuracy"],
                  "best_arm_balanced_accuracy": ["balanced:balanced_accuracy"]}


def _mean_of(result: dict[str, Any], arm: str, stat: str) -> float | None:
    return ((result["arms"].get(arm) or {}).get("stats", {}).get(stat) or {}).get("mean")


def _vlm_arms(result: dict[str, Any]) -> list[str]:
    """The regime's VLM arms with at least two seeds (one seed is never a claim)."""
    return [a for a in ARM_ORDER if len((result["arms"].get(a) or {}).get("seeds", [])) >= 2]


def best_arm_target(result: dict[str, Any], target: str) -> dict[str, Any]:
    """The best VLM arm on one target statistic (the better decode where two count), whether its mean reaches the
    threshold, and whether it is above the CNN on every seed at that decode."""
    rows = [(_mean_of(result, a, s), a, s) for a in _vlm_arms(result) for s in BEST_ARM_STATS[target]
            if _mean_of(result, a, s) is not None]
    if not rows:
        return {"met": False, "why": "no VLM arm with two seeds"}

    def above_cnn(arm: str, stat: str) -> bool:
        vs_cnn = result["comparisons"].get(f"{arm} − cnn ({stat})")
        return bool(vs_cnn) and all(d > 0 for d in vs_cnn["per_seed"])

    value, arm, stat = max(rows)
    vs_cnn = result["comparisons"].get(f"{arm} − cnn ({stat})")
    met_by = sorted({a for v, a, s in rows if v >= TARGETS[target] and above_cnn(a, s)})
    return {"arm": arm, "stat": stat, "value": value, "threshold": TARGETS[target],
            "cnn": _mean_of(result, "cnn", stat), "per_seed_minus_cnn": vs_cnn["per_seed"] if vs_cnn else None,
            "above_cnn_every_seed": above_cnn(arm, stat), "met_by": met_by, "met": bool(met_by)}


def targets(regimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target of the issue, met or not, with the figures that decide it (the best arm's: full regime)."""
    out: dict[str, Any] = {}
    full, low = regimes.get("full"), regimes.get("low_resource")
    if full:
        out.update({t: best_arm_target(full, t) for t in BEST_ARM_STATS})
    per_regime = {}
    for regime, r in regimes.items():
        bal = r["comparisons"].get("grpo_plus − sft_balanced (balanced:balanced_accuracy)")
        auc = r["comparisons"].get("grpo_plus − sft_balanced (scores:auc)")
        if bal and auc:
            per_regime[regime] = {"balanced_delta": bal["delta"], "verdict": bal["verdict"], "auc_delta": auc["delta"],
                                  "met": bal["delta"] >= TARGETS["grpo_plus_over_sft_balanced"]
                                  and bal["verdict"] == "holds" and auc["delta"] >= 0}
    out["grpo_plus_over_sft_balanced"] = {"regimes": per_regime, "threshold": TARGETS["grpo_plus_over_sft_balanced"],
                                          "met": any(v["met"] for v in per_regime.values())}
    if full:
        gap = full["comparisons"].get("dermiq − grpo_plus (balanced:balanced_accuracy)")
        fact = (full.get("factuality") or {}).get("knowledge_error_rate")
        out["dermiq_within_grpo_plus"] = {
            "balanced_delta": gap["delta"] if gap else None, "threshold": TARGETS["dermiq_within_grpo_plus"],
            "within": bool(gap) and gap["delta"] >= TARGETS["dermiq_within_grpo_plus"],
            "knowledge_errors_before_dpo": fact["before"] if fact else None,
            "knowledge_errors_after_dpo": fact["after"] if fact else None,
            "fewer_errors_after_dpo": bool(fact) and fact["verdict"] == "DPO lowers it"}
        out["dermiq_within_grpo_plus"]["met"] = (out["dermiq_within_grpo_plus"]["within"]
                                                 and out["dermiq_within_grpo_plus"]["fewer_errors_after_dpo"])
    if low:
        # a VLM arm that saw the unlabelled images is held against the CNN given the same images
        rows = [(a, _mean_of(low, a, "scores:auc"), "cnn_ssl" if a.startswith("base_ssl") else "cnn")
                for a in _vlm_arms(low)]
        rows = [(a, v, c, _mean_of(low, c, "scores:auc")) for a, v, c in rows if v is not None]
        rows = [r for r in rows if r[3] is not None]
        if rows:
            arm, value, cnn, cnn_value = max(rows, key=lambda r: r[1] - r[3])
            out["low_resource_vlm_vs_cnn_auc"] = {"arm": arm, "auc": value, "anchor": cnn, "anchor_auc": cnn_value,
                                                  "met": value >= cnn_value}
    params = [r.get("parameters") for r in regimes.values() if r.get("parameters")]
    if params:
        out["max_params"] = {"parameters": max(params), "threshold": TARGETS["max_params"],
                             "met": max(params) <= TARGETS["max_params"]}
    return out


def targets_markdown(t: dict[str, Any]) -> list[str]:
    """One line per target: met or missed, and the figures behind it."""
    word = {True: "**met**", False: "**missed**"}
    lines = ["Targets (the issue's; test split; a VLM arm needs two seeds):", ""]
    for key in BEST_ARM_STATS:
        d = t.get(key)
        if d and "arm" in d:
            lines.append(f"- {key.replace('_', ' ')} ≥ {d['threshold']} and above the CNN on every seed (full): "
                         f"{word[d['met']]}: best {d['arm']} ({d['stat']}) {d['value']:.4f}, CNN "
                         f"{d['cnn'] if d['cnn'] is not None else '–'}, arm − CNN per seed "
                         f"{d['per_seed_minus_cnn']}")
    g = t.get("grpo_plus_over_sft_balanced")
    if g:
        parts = "; ".join(f"{r}: Δ bal. {v['balanced_delta']:+.4f} ({v['verdict']}), Δ AUC {v['auc_delta']:+.4f}"
                          for r, v in g["regimes"].items())
        lines.append(f"- GRPO++ − sft_balanced ≥ +{g['threshold']} bal. acc. (both intervals above 0) with AUC not "
                     f"lower, in one regime: {word[g['met']]}: {parts or 'not measured'}")
    d = t.get("dermiq_within_grpo_plus")
    if d:
        delta = f"{d['balanced_delta']:+.4f}" if d["balanced_delta"] is not None else "–"
        yes = {True: "yes", False: "no"}
        lines.append(f"- DermIQ within 1 point of GRPO++ on bal. acc. and fewer KG knowledge errors after its DPO "
                     f"(full): {word[d['met']]}: Δ bal. {delta} (within: {yes[d['within']]}); "
                     f"knowledge-error rate before DPO {d['knowledge_errors_before_dpo']}, after "
                     f"{d['knowledge_errors_after_dpo']} (fewer after: {yes[d['fewer_errors_after_dpo']]})")
    lo = t.get("low_resource_vlm_vs_cnn_auc")
    if lo:
        lines.append(f"- Low resource, best VLM arm at or above the CNN on AUC: {word[lo['met']]}: {lo['arm']} "
                     f"{lo['auc']:.4f} vs {lo['anchor']} {lo['anchor_auc']:.4f}")
    p = t.get("max_params")
    if p:
        lines.append(f"- the micro model ≤ {p['threshold']:,} parameters: {word[p['met']]} ({p['parameters']:,})")
    return [*lines, ""]


# ------------------------------------------------------------------ plots


def plot_regime(regime: str, arms: dict[str, dict[int, Record]], summary: dict[str, Any], out_dir: Path
                ) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = [a for a in [*ARM_ORDER, *CNNS] if a in summary and summary[a]["stats"]]
    # Test statistics per arm (AUC, balanced accuracy at the balanced decode, accuracy as generated), seed intervals.
    panels = [("scores:auc", "AUC"), ("balanced:balanced_accuracy", "bal. acc. (prior-corrected)"),
              ("as_generated:accuracy", "accuracy (as generated)")]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(shown) + 2), 4))
    for j, (key, label) in enumerate(panels):
        xs, ys, lo, hi = [], [], [], []
        for i, arm in enumerate(shown):
            s = summary[arm]["stats"].get(key)
            if s:
                ci = s["seed_ci95"] or [s["mean"], s["mean"]]
                xs.append(i + (j - 1) * 0.27)
                ys.append(s["mean"])
                lo.append(max(0.0, s["mean"] - ci[0]))
                hi.append(max(0.0, ci[1] - s["mean"]))
        ax.bar(xs, ys, width=0.27, yerr=[lo, hi], capsize=2, label=label)
    for name, _, auc in PUBLISHED[:1]:
        ax.axhline(auc, ls=":", lw=0.8, color="grey", label=f"AUC of {name}")
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"{regime}: DermaMNIST test (mean over seeds, 95% seed-level t interval)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))  # beside the axes: no bar is covered
    fig.tight_layout()
    path = out_dir / f"{regime}_test_metrics.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append(str(path))
    # Per-class recall at the balanced decode.
    classes = sorted({c for a in shown for c in summary[a]["per_class_recall_balanced"]})
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(shown))
    for j, arm in enumerate(shown):
        rec = summary[arm]["per_class_recall_balanced"]
        ax.bar(np.arange(len(classes)) + j * width, [rec.get(c, 0) for c in classes], width=width, label=arm,
               color=plt.get_cmap("tab20")(j % 20))  # a colour per arm: the lab makes eleven, tab10 has ten
    ax.set_xticks(np.arange(len(classes)) + 0.4, [c.replace("_", " ") for c in classes], rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test recall (mean over seeds)")
    ax.set_title(f"{regime}: per-class test recall, prior-corrected for balanced accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    fig.tight_layout()
    path = out_dir / f"{regime}_per_class_recall.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append(str(path))
    # Learning curves: one panel per VLM arm.
    vlm = [a for a in shown if a not in CNNS]
    if vlm:
        cols = 4
        rows = (len(vlm) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, arm in zip(axes.flat, vlm, strict=False):
            for seed, rec in sorted(arms[arm].items()):
                for name, pts in (rec.get("curves") or {}).items():
                    if pts:
                        ax.plot(*zip(*pts, strict=True), label=f"s{seed} {name}", lw=0.9)
            ax.set_title(arm)
            ax.set_xlabel("step")
            if ax.get_lines():
                ax.legend(fontsize=5)
        for ax in list(axes.flat)[len(vlm):]:
            ax.axis("off")
        fig.suptitle(f"{regime}: training curves")
        fig.tight_layout()
        path = out_dir / f"{regime}_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


# ------------------------------------------------------------------ markdown


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def _cell(s: dict[str, Any] | None) -> str:
    if not s:
        return "–"
    return f"{s['mean']:.3f} {_ci(s['seed_ci95'])}"


def _per_seed(s: dict[str, Any] | None) -> str:
    return " / ".join(f"{v:.3f}" for v in s["per_seed"]) if s else "–"


def _row_name(arm: str) -> str:
    """The arm's table label, naming the command that makes rows ``make bench-learning`` does not."""
    name = CNNS.get(arm, arm)
    if arm in ABLATIONS:
        return f"{name} (`run.py --ablations`)"
    if arm == "cnn_ssl" or arm.startswith("base_ssl"):
        return f"{name} (`make bench-learning-lab`)"
    if arm in BASE_VARIANTS:
        return f"{name} (`run.py --base-variants`)"
    return name


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for regime, r in result["regimes"].items():
        arms = r["arms"]
        lines += [f"**{regime}** ({r.get('train_images', '?')} training images; test split; mean [95% seed-level t "
                  "interval]; bal. = balanced accuracy)", "",
                  "| arm | seeds | AUC | AUC per seed | bal., prior-corrected (τ on val) | per seed | "
                  "acc., as generated | acc., prior-corrected for acc. | bal., as generated | macro-F1, "
                  "prior-corrected | training s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in [*ARM_ORDER, *CNNS]:
            a = arms.get(arm)
            if not a or not a["stats"]:
                continue
            st = a["stats"]
            name = _row_name(arm)
            lines.append(f"| {name} | {len(a['seeds'])} | {_cell(st.get('scores:auc'))} | "
                         f"{_per_seed(st.get('scores:auc'))} | {_cell(st.get('balanced:balanced_accuracy'))} | "
                         f"{_per_seed(st.get('balanced:balanced_accuracy'))} | "
                         f"{_cell(st.get('as_generated:accuracy'))} | {_cell(st.get('accuracy:accuracy'))} | "
                         f"{_cell(st.get('as_generated:balanced_accuracy'))} | "
                         f"{_cell(st.get('balanced:macro_f1'))} | {a['training_seconds_mean']} |")
        maj = r.get("majority_class")
        if maj:
            lines.append(f"| always the majority class ({maj['class']}) | – | 0.500 | – | {1 / maj['classes']:.3f} | – "
                         f"| {maj['accuracy']:.3f} | {maj['accuracy']:.3f} | {1 / maj['classes']:.3f} | – | – |")
        for name, acc, auc in result["published"]:
            lines.append(f"| published: {name} | – | {auc if auc is not None else '–'} | – | – | – | {acc} | – | – "
                         "| – | – |")
        classes = sorted({c for a in arms.values() for c in a.get("per_class_recall_balanced", {})})
        lines += ["", f"Per-class test recall, {regime}, prior-corrected for balanced accuracy (mean over seeds):", "",
                  "| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for arm in [*ARM_ORDER, *CNNS]:
            a = arms.get(arm)
            if a and a.get("per_class_recall_balanced"):
                lines.append(f"| {arm} | " + " | ".join(f"{a['per_class_recall_balanced'].get(c, 0):.3f}"
                                                        for c in classes) + " |")
        lines += ["", f"Paired differences, {regime} (test; mean of per-seed differences; seed-level 95% t interval; "
                      "paired item bootstrap 95%; 'holds' = ≥ 2 seeds, one code version, both intervals above 0):", ""]
        for key, d in r["comparisons"].items():
            lines.append(f"- {key}: {d['delta']:+.4f} (per seed {', '.join(f'{x:+.4f}' for x in d['per_seed'])}; "
                         f"seed CI {_ci(d['seed_ci95'])}; item CI {_ci(d['item_ci95'])}) → {d['verdict']}")
        f = r.get("factuality")
        if f:
            lines += ["", f"DermIQ's DPO on the KG factuality suite, {regime} (after DPO − before it, per answer):", ""]
            for field in ("contradicted", "knowledge_error_rate"):
                d = f[field]
                lines.append(f"- {field.replace('_', ' ')}: before {d['before']}, after {d['after']}; "
                             f"{d['delta']:+.4f} (seed CI {_ci(d['seed_ci95'])}; item CI {_ci(d['item_ci95'])}) → "
                             f"{d['verdict']}")
        lines.append("")
    if result.get("targets"):
        lines += targets_markdown(result["targets"])
    return "\n".join(lines)


def _regime_job(regime: str, records_dir: Path, plots_dir: Path, n_boot: int) -> dict[str, Any] | None:
    recs = load_regime(regime, records_dir)
    return regime_result(regime, recs, plots_dir, n_boot) if recs else None


def regime_results(records_dir: Path, plots_dir: Path, n_boot: int, jobs: int = 1) -> dict[str, dict[str, Any]]:
    """``regime_result`` of every regime with records, ``jobs`` regimes at a time (one process each)."""
    if jobs <= 1:
        done = [_regime_job(r, records_dir, plots_dir, n_boot) for r in REGIMES]
    else:
        from concurrent.futures import ProcessPoolExecutor

        n = len(REGIMES)
        with ProcessPoolExecutor(min(jobs, n)) as pool:
            done = list(pool.map(_regime_job, REGIMES, [records_dir] * n, [plots_dir] * n, [n_boot] * n))
    return {r: result for r, result in zip(REGIMES, done, strict=True) if result is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning",
                    help="run folders whose finished runs get (fresh) records first; records are the input")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="regimes computed in parallel processes (each regime's draws are seeded on their own, so "
                         "the result does not depend on it)")
    ap.add_argument("--no-readme", dest="readme", action="store_false",
                    help="leave docs/BENCHMARKS.md's table as it is")
    args = ap.parse_args()
    from dermvlm.manifest import versions

    if args.runs.is_dir():
        export(args.runs.resolve(), args.records)
    regimes = regime_results(args.records, args.out / "learning", args.bootstrap, args.jobs)
    result = {
        "benchmark": "DermaMNIST learning benchmark v3 (micro VLM from scratch: vision stage + language pretrain, then "
                     "post-training arms; served by vLLM; class scores and prior-corrected decodes; CNN anchor)",
        "config": "configs/dermamnist-micro.yaml", "budget_post_training_sequences": BUDGET,
        "cnn_epochs": CNN_EPOCHS, "regimes": regimes, "published": PUBLISHED, "target_thresholds": TARGETS,
        "targets": targets(regimes),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "processor": platform.processor()},
        "versions": versions(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "learning.md").write_text(table)
    if args.readme:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from readme_tables import BENCHMARKS, update_readme

        update_readme("learning", table, BENCHMARKS)
    print(table)


if __name__ == "__main__":
    main()
