"""Tabulate and plot the learning benchmark v2 from the committed run records (``records.py``; the finished runs
under ``runs/learning/`` get fresh records first): ``benchmarks/results/learning.json``, a markdown table
(``benchmarks/results/learning.md``, also written into docs/BENCHMARKS.md) and plots
(``benchmarks/results/learning/*.png``).

Per regime and arm: accuracy, balanced accuracy and macro-F1 on DermaMNIST test, per seed and as a mean with two
intervals: over seeds (Student t on the per-seed values: what another seed would give) and over items (bootstrap of
the mean, test items resampled within each seed). Comparisons are paired (same seeds, same items): per-seed
differences, their seed-level t interval and a paired item bootstrap; a claim "A beats B" is marked as holding only
when A is ahead on every seed or the seed-level interval excludes zero. The in-run CNN baseline stands beside the
arms, with the VLM/CNN balanced-accuracy ratio per seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ABLATIONS, BASE_VARIANTS, BUDGET, MAIN_ARMS, REGIMES, ROOT
from records import RECORDS, export, load_regime

from dermvlm.evaluation import metrics as M

# MedMNIST v2 (Yang et al., Scientific Data 2023), DermaMNIST test ACC: see ../shared/data/dermamnist/SOURCES.md.
BASELINES = {"ResNet-18 (28 px)": 0.735, "ResNet-18 (224 px)": 0.754, "ResNet-50 (28 px)": 0.735,
             "auto-sklearn": 0.719, "AutoKeras": 0.749, "Google AutoML Vision": 0.768}
TARGETS = {"full_best_arm_accuracy": 0.76, "full_best_arm_balanced_accuracy": 0.55, "max_params": 20_000_000,
           "max_base_minutes_2_cores": 60, "grpo_plus_over_sft_balanced": 0.03}
ARM_ORDER = ["base", *MAIN_ARMS, *ABLATIONS, *BASE_VARIANTS]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
COMPARISONS = (("grpo_plus", "sft_only"), ("grpo_plus", "plain_grpo"), ("dermiq", "grpo_plus"),
               ("dermiq", "sft_only"), ("plain_grpo", "sft_only"), ("sft_only", "base"), ("grpo_plus", "base"))


def _encode(y_true: list[str], y_pred: list[str], classes: list[str] | None = None):
    import numpy as np

    classes = classes or sorted(set(y_true))
    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index[c] for c in y_true])
    p = np.array([index.get(c, -1) for c in y_pred])  # anything outside the gold classes is a miss
    return t, p, len(classes)


def _fast(metric: str, t, p, k: int) -> float:
    """accuracy / balanced accuracy / macro-F1 on integer labels (the same definitions as evaluation.metrics)."""
    import numpy as np

    if metric == "accuracy":
        return float((t == p).mean())
    tp = np.bincount(t[t == p], minlength=k).astype(float)
    support = np.bincount(t, minlength=k).astype(float)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(k), where=present)
    if metric == "balanced_accuracy":
        return float(recall[present].mean())
    predicted = np.bincount(p[p >= 0], minlength=k).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return float(f1[present].mean())


def fast_ci(metric: str, y_true: list[str], y_pred: list[str], n: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap over items (seeded), vectorised with numpy."""
    return mean_ci(metric, [(y_true, y_pred)], n, seed)


def mean_ci(metric: str, runs: list[tuple[list[str], list[str]]], n: int = 1000, seed: int = 0
            ) -> list[float] | None:
    """Bootstrap interval of the mean over runs (seeds) of ``metric``: each draw resamples every run's test items
    and averages the runs' metrics, so the interval belongs to the reported mean."""
    import numpy as np

    if not runs or any(len(t) < 2 for t, _ in runs):
        return None
    encoded = [_encode(t, p) for t, p in runs]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        total = 0.0
        for t, p, k in encoded:
            i = rng.integers(0, len(t), len(t))
            total += _fast(metric, t[i], p[i], k)
        draws.append(total / len(encoded))
    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]


def seed_ci(values: list[float]) -> list[float] | None:
    """95% Student-t interval of the mean over seeds (None for fewer than two seeds)."""
    import numpy as np
    from scipy import stats

    if len(values) < 2:
        return None
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return [round(float(v.mean() - half), 4), round(float(v.mean() + half), 4)]


Record = dict[str, Any]


def summarize_arm(runs: dict[int, Record]) -> dict[str, Any]:
    """Per-seed test/val metrics (with item bootstraps), their mean and seed-level interval, of one arm's records."""
    per_seed: dict[int, Any] = {}
    seed_pairs: list[tuple[list[str], list[str]]] = []
    for seed, rec in sorted(runs.items()):
        yt, yp = rec["test"]["gold"], rec["test"]["pred"]
        seed_pairs.append((yt, yp))
        entry: dict[str, Any] = {"test": {m: round(getattr(M, m)(yt, yp), 4) for m in METRICS}}
        entry["test"]["ci95"] = {m: fast_ci(m, yt, yp, 1000, seed) for m in METRICS}
        entry["test"]["per_class_recall"] = {k: round(v["recall"], 4) for k, v in M.per_class(yt, yp).items()}
        entry["test"]["confusion"] = M.confusion(yt, yp)
        if rec.get("val"):
            entry["val"] = {m: round(getattr(M, m)(rec["val"]["gold"], rec["val"]["pred"]), 4) for m in METRICS}
        elif rec.get("val_metrics"):
            entry["val"] = rec["val_metrics"]
        entry["stages"] = rec.get("stages", {})
        entry["source"] = rec.get("source", "run")
        per_seed[seed] = entry
    if not per_seed:
        return {}
    values = {m: [e["test"][m] for e in per_seed.values()] for m in METRICS}
    mean = {m: round(sum(v) / len(v), 4) for m, v in values.items()}
    classes = sorted({c for e in per_seed.values() for c in e["test"]["per_class_recall"]})
    recall = {c: round(sum(e["test"]["per_class_recall"].get(c, 0.0) for e in per_seed.values()) / len(per_seed), 4)
              for c in classes}
    val_mean = None
    if all("val" in e for e in per_seed.values()):
        val_mean = {m: round(sum(e["val"][m] for e in per_seed.values()) / len(per_seed), 4) for m in METRICS}
    seconds = [sum(s.get("seconds") or 0 for s in e["stages"].values()) for e in per_seed.values()]
    return {"seeds": sorted(per_seed), "test_mean": mean, "test_per_seed": values,
            "test_seed_ci95": {m: seed_ci(v) for m, v in values.items()},
            "test_ci95": {m: mean_ci(m, seed_pairs, 1000, 0) for m in METRICS},
            "val_mean": val_mean, "per_class_recall_mean": recall,
            "training_seconds_mean": round(sum(seconds) / len(seconds), 1), "per_seed": per_seed}


def _aligned(a: Record, b: Record) -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]] | None:
    """The two records' (gold, pred) on their shared test items, item by item; None when either lost its ids."""
    if not a["test"].get("ids") or not b["test"].get("ids"):
        return None
    bmap = dict(zip(b["test"]["ids"], b["test"]["pred"], strict=True))
    rows = [(g, p, bmap[i]) for i, g, p in zip(a["test"]["ids"], a["test"]["gold"], a["test"]["pred"], strict=True)
            if i in bmap]
    gold = [r[0] for r in rows]
    return (gold, [r[1] for r in rows]), (gold, [r[2] for r in rows])


def paired_delta(a_runs: dict[int, Record], b_runs: dict[int, Record], metric: str, n: int = 1000
                 ) -> dict[str, Any]:
    """Mean over shared seeds of metric(a) - metric(b): per-seed values, a seed-level t interval, an item bootstrap
    (paired on the seeds whose records keep item ids, each arm resampled on its own where they were lost), and
    whether "a beats b" holds (every seed ahead, or the seed interval above 0)."""
    import numpy as np

    seeds = sorted(set(a_runs) & set(b_runs))
    if not seeds:
        return {}
    fn = getattr(M, metric)
    per_seed, encoded, paired, unpaired = [], [], [], []
    for s in seeds:
        a, b = a_runs[s], b_runs[s]
        aligned = _aligned(a, b)
        if aligned is not None:
            (ta, pa), (_, pb) = aligned
            per_seed.append(round(fn(ta, pa) - fn(ta, pb), 4))
            t, ea, k = _encode(ta, pa)
            _, eb, _ = _encode(ta, pb, sorted(set(ta)))
            encoded.append(((t, ea, k), (t, eb, k)))
            paired.append(s)
        else:
            per_seed.append(round(fn(a["test"]["gold"], a["test"]["pred"]) - fn(b["test"]["gold"], b["test"]["pred"]),
                                  4))
            encoded.append((_encode(a["test"]["gold"], a["test"]["pred"]),
                            _encode(b["test"]["gold"], b["test"]["pred"], sorted(set(a["test"]["gold"])))))
            unpaired.append(s)
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(n):
        total = 0.0
        for s, ((t, a, k), (tb, b, _)) in zip(seeds, encoded, strict=True):
            i = rng.integers(0, len(t), len(t))
            j = i if s in paired else rng.integers(0, len(tb), len(tb))
            total += _fast(metric, t[i], a[i], k) - _fast(metric, tb[j], b[j], k)
        draws.append(total / len(seeds))
    sci = seed_ci(per_seed)
    holds = len(per_seed) >= 2 and (all(d > 0 for d in per_seed) or (sci is not None and sci[0] > 0))
    reversed_ = len(per_seed) >= 2 and (all(d < 0 for d in per_seed) or (sci is not None and sci[1] < 0))
    return {"delta": round(sum(per_seed) / len(per_seed), 4), "per_seed": per_seed, "seed_ci95": sci,
            "ci95": [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)],
            "seeds": seeds, "item_bootstrap": {"paired_seeds": paired, "unpaired_seeds": unpaired},
            "a_beats_b": holds, "b_beats_a": reversed_}


def load_cnn(records: dict[int, Record]) -> dict[str, Any]:
    """The CNN baseline's per-seed results (its records) summarised like an arm."""
    per_seed = dict(sorted(records.items()))
    if not per_seed:
        return {}
    values = {m: [r["test"][m] for r in per_seed.values()] for m in METRICS}
    return {"model": next(iter(per_seed.values()))["model"], "seeds": sorted(per_seed),
            "test_mean": {m: round(sum(v) / len(v), 4) for m, v in values.items()}, "test_per_seed": values,
            "test_seed_ci95": {m: seed_ci(v) for m, v in values.items()},
            "val_mean": {m: round(sum(r["val"][m] for r in per_seed.values()) / len(per_seed), 4) for m in METRICS},
            "per_class_recall_mean": {c: round(sum(r["test"]["per_class_recall"][c] for r in per_seed.values())
                                               / len(per_seed), 4)
                                      for c in next(iter(per_seed.values()))["test"]["per_class_recall"]},
            "train_seconds_mean": round(sum(r["train_seconds"] for r in per_seed.values()) / len(per_seed), 1),
            "cpu_seconds_mean": round(sum(r.get("cpu_seconds", r["train_seconds"]) for r in per_seed.values())
                                      / len(per_seed), 1),
            "budget_seconds": sorted({r.get("budget_seconds") for r in per_seed.values()}, key=str),
            "per_seed": {s: {k: v for k, v in r.items() if k not in ("val", "test", "kind", "regime", "run")} | {
                "test": {k: v for k, v in r["test"].items() if k not in ("predictions", "gold")}}
                for s, r in per_seed.items()}}


def vlm_vs_cnn(arm: dict[str, Any], cnn: dict[str, Any], metric: str = "balanced_accuracy") -> dict[str, Any]:
    """Per-seed VLM − CNN and VLM / CNN on ``metric`` (same seed, same test split)."""
    seeds = [s for s in arm.get("seeds", []) if s in cnn.get("seeds", [])]
    if not seeds:
        return {}
    a = {s: arm["per_seed"][s]["test"][metric] for s in seeds}
    c = dict(zip(cnn["seeds"], cnn["test_per_seed"][metric], strict=True))
    deltas = [round(a[s] - c[s], 4) for s in seeds]
    sci = seed_ci(deltas)
    return {"seeds": seeds, "per_seed_delta": deltas, "delta": round(sum(deltas) / len(deltas), 4),
            "seed_ci95": sci, "per_seed_ratio": [round(a[s] / c[s], 3) if c[s] else None for s in seeds],
            "vlm_beats_cnn": len(deltas) >= 2 and (all(d > 0 for d in deltas) or (sci is not None and sci[0] > 0)),
            "cnn_beats_vlm": len(deltas) >= 2 and (all(d < 0 for d in deltas) or (sci is not None and sci[1] < 0))}


def plot_regime(regime: str, arms: dict[str, dict[int, Record]], summary: dict[str, Any], cnn: dict[str, Any],
                out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = [a for a in ARM_ORDER if a in arms and summary.get(a)]
    # Learning curves: one panel per arm (the base panel holds the vision and pretrain losses).
    cols = 4
    rows = max(1, (len(shown) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, arm in zip(axes.flat, shown, strict=False):
        for seed, rec in sorted(arms[arm].items()):
            for name, pts in (rec.get("curves") or {}).items():
                if pts:
                    ax.plot(*zip(*pts, strict=True), label=f"s{seed} {name}", lw=0.9)
        ax.set_title(arm)
        ax.set_xlabel("step")
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"{regime}: training curves")
    fig.tight_layout()
    path = out_dir / f"{regime}_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    # Per-class recall per arm beside the CNN.
    classes = sorted({c for a in shown for c in summary[a]["per_class_recall_mean"]})
    if classes:
        fig, ax = plt.subplots(figsize=(10, 4))
        names = [*shown, *(["CNN"] if cnn else [])]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            rec = cnn["per_class_recall_mean"] if name == "CNN" else summary[name]["per_class_recall_mean"]
            ax.bar(np.arange(len(classes)) + j * width, [rec.get(c, 0) for c in classes], width=width, label=name)
        ax.set_xticks(np.arange(len(classes)) + 0.4, [c.replace("_", " ") for c in classes], rotation=20, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test recall (mean over seeds)")
        ax.set_title(f"{regime}: per-class test recall")
        ax.legend(fontsize=6, ncol=3)
        fig.tight_layout()
        path = out_dir / f"{regime}_per_class_recall.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    # Confusion matrices (the first seed of each main arm).
    main = [a for a in ["base", *MAIN_ARMS] if a in shown]
    if main:
        fig, axes = plt.subplots(1, len(main), figsize=(3.2 * len(main), 3.4), squeeze=False)
        for ax, arm in zip(axes[0], main, strict=True):
            seed = summary[arm]["seeds"][0]
            yt, yp = arms[arm][seed]["test"]["gold"], arms[arm][seed]["test"]["pred"]
            index = {c: i for i, c in enumerate(classes)}
            mat = np.zeros((len(classes), len(classes) + 1))
            for t, p in zip(yt, yp, strict=True):
                mat[index[t], index.get(p, len(classes))] += 1
            mat = mat / np.maximum(1, mat.sum(1, keepdims=True))
            ax.imshow(mat, vmin=0, vmax=1, cmap="Blues")
            ax.set_title(f"{arm} (s{seed})", fontsize=8)
            ax.set_xticks(range(len(classes) + 1), [c[:5] for c in classes] + ["other"], rotation=90, fontsize=6)
            ax.set_yticks(range(len(classes)), [c[:5] for c in classes], fontsize=6)
        fig.suptitle(f"{regime}: test confusion (rows: gold, normalised)")
        fig.tight_layout()
        path = out_dir / f"{regime}_confusion.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    # Test metrics per arm, with the CNN baseline as lines.
    fig, ax = plt.subplots(figsize=(9, 4))
    for j, metric in enumerate(METRICS):
        xs = [i + (j - 1) * 0.27 for i in range(len(shown))]
        ys = [summary[a]["test_mean"][metric] for a in shown]
        cis = [summary[a]["test_seed_ci95"][metric] or [y, y] for a, y in zip(shown, ys, strict=True)]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis, strict=True)],
               [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis, strict=True)]]
        ax.bar(xs, ys, width=0.27, yerr=err, label=metric, capsize=2)
    if cnn:
        for metric, style in (("accuracy", "--"), ("balanced_accuracy", ":")):
            ax.axhline(cnn["test_mean"][metric], ls=style, lw=0.9, color="black")
            ax.text(len(shown) - 0.5, cnn["test_mean"][metric], f"CNN {metric} {cnn['test_mean'][metric]:.3f}",
                    fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"{regime}: DermaMNIST test (micro VLM served by vLLM); 95% seed-level t interval")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{regime}_test_metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    return written


def _per_seed(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for regime, r in result["regimes"].items():
        arms, cnn = r["arms"], r.get("cnn_baseline") or {}
        lines += [f"**{regime}** ({r.get('train_images', '?')} training images)", "",
                  "| arm | seeds | test bal. acc. per seed | mean [seed 95% CI] | test acc. per seed | mean | "
                  "macro-F1 | val bal. acc. | training s |", "|---|---|---|---|---|---|---|---|---|"]
        for arm in ARM_ORDER:
            a = arms.get(arm)
            if not a:
                continue
            t, v = a["test_mean"], a["val_mean"] or {}
            lines.append(f"| {arm} | {len(a['seeds'])} | {_per_seed(a['test_per_seed']['balanced_accuracy'])} | "
                         f"{t['balanced_accuracy']:.3f} {_ci(a['test_seed_ci95']['balanced_accuracy'])} | "
                         f"{_per_seed(a['test_per_seed']['accuracy'])} | {t['accuracy']:.3f} | {t['macro_f1']:.3f} | "
                         f"{v.get('balanced_accuracy', float('nan')):.3f} | {a['training_seconds_mean']} |")
        if cnn:
            t = cnn["test_mean"]
            lines.append(f"| CNN: ResNet-18 from scratch (same rows, augmentation, compute; training s = CPU s) | "
                         f"{len(cnn['seeds'])} | "
                         f"{_per_seed(cnn['test_per_seed']['balanced_accuracy'])} | {t['balanced_accuracy']:.3f} "
                         f"{_ci(cnn['test_seed_ci95']['balanced_accuracy'])} | "
                         f"{_per_seed(cnn['test_per_seed']['accuracy'])} | {t['accuracy']:.3f} | {t['macro_f1']:.3f} | "
                         f"{cnn['val_mean']['balanced_accuracy']:.3f} | {cnn['cpu_seconds_mean']} |")
        maj = r.get("majority_class")
        if maj:
            lines.append(f"| always the majority class ({maj['class']}) | – | – | {1 / maj['classes']:.3f} | – | "
                         f"{maj['accuracy']:.3f} | – | – | – |")
        classes = sorted({c for a in arms.values() if a for c in a["per_class_recall_mean"]})
        lines += ["", f"Per-class test recall, {regime} (mean over seeds):", "",
                  "| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        for arm in ARM_ORDER:
            a = arms.get(arm)
            if a:
                lines.append(f"| {arm} | " + " | ".join(f"{a['per_class_recall_mean'].get(c, 0):.3f}"
                                                        for c in classes) + " |")
        if cnn:
            lines.append("| CNN | " + " | ".join(f"{cnn['per_class_recall_mean'].get(c, 0):.3f}" for c in classes)
                         + " |")
        lines += ["", f"Paired differences, {regime} (test; per seed, mean, seed-level 95% t interval, item "
                      "bootstrap 95%; 'holds' = ahead on every seed or seed interval above 0):", ""]
        for key, d in r["comparisons"].items():
            if d:
                verdict = ("one seed: no claim" if len(d["per_seed"]) < 2 else "holds" if d["a_beats_b"]
                           else "reversed" if d["b_beats_a"] else "not shown")
                lines.append(f"- {key}: {d['delta']:+.4f} (per seed {', '.join(f'{x:+.4f}' for x in d['per_seed'])};"
                             f" seed CI {_ci(d['seed_ci95'])}; item CI [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]) "
                             f"→ {verdict}")
        for key, d in r.get("vlm_vs_cnn", {}).items():
            if d:
                verdict = "VLM ahead" if d["vlm_beats_cnn"] else "CNN ahead" if d.get("cnn_beats_vlm") else "not shown"
                lines.append(f"- {key} − CNN (balanced_accuracy): {d['delta']:+.4f} (per seed "
                             f"{', '.join(f'{x:+.4f}' for x in d['per_seed_delta'])}; ratio "
                             f"{', '.join(str(x) for x in d['per_seed_ratio'])}) → "
                             f"{verdict}")
        lines.append("")
    return "\n".join(lines)


def regime_result(regime: str, records: dict[str, Record], plots_dir: Path) -> dict[str, Any]:
    arms: dict[str, dict[int, Record]] = {}
    cnn_records: dict[int, Record] = {}
    for rec in records.values():
        if rec["kind"] == "cnn":
            cnn_records[rec["seed"]] = rec
        else:
            arms.setdefault(rec["arm"], {})[rec["seed"]] = rec
    summary = {arm: summarize_arm(runs) for arm, runs in arms.items()}
    comparisons = {}
    for metric in ("balanced_accuracy", "accuracy"):
        for a, b in COMPARISONS:
            if a in arms and b in arms:
                comparisons[f"{a} - {b} ({metric})"] = paired_delta(arms[a], arms[b], metric)
    for ablation in ABLATIONS:  # exactly one switch flipped, against GRPO++ as configured, same seeds
        if ablation in arms and "grpo_plus" in arms:
            comparisons[f"{ablation} - grpo_plus (balanced_accuracy)"] = paired_delta(
                arms[ablation], arms["grpo_plus"], "balanced_accuracy")
    for variant in BASE_VARIANTS:
        if variant in arms and "base" in arms:
            for metric in ("balanced_accuracy", "accuracy"):
                comparisons[f"{variant} - base ({metric})"] = paired_delta(arms[variant], arms["base"], metric)
    cnn = load_cnn(cnn_records)
    out: dict[str, Any] = {"arms": summary, "comparisons": comparisons, "cnn_baseline": cnn,
                           "vlm_vs_cnn": {arm: vlm_vs_cnn(summary[arm], cnn) for arm in ["base", *MAIN_ARMS]
                                          if summary.get(arm) and cnn}}
    bases = arms.get("base", {})
    out["base_minutes"] = {s: round(sum((i.get("seconds") or 0) for i in r["stages"].values()) / 60, 1)
                           for s, r in sorted(bases.items())}
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
    out["plots"] = plot_regime(regime, arms, summary, cnn, plots_dir)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning",
                    help="run folders whose finished runs get (fresh) records first; records are the input")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-readme", dest="readme", action="store_false",
                    help="leave docs/BENCHMARKS.md's table as it is")
    args = ap.parse_args()
    from dermvlm.manifest import versions

    if args.runs.is_dir():
        export(args.runs.resolve(), args.records)
    regimes = {r: regime_result(r, recs, args.out / "learning") for r in REGIMES
               if (recs := load_regime(r, args.records))}
    result = {
        "benchmark": "DermaMNIST learning benchmark v2 (micro VLM from scratch: vision stage + language pretrain, then "
                     "post-training arms; served by vLLM; in-run CNN baseline)",
        "config": "configs/dermamnist-micro.yaml", "budget_post_training_sequences": BUDGET, "regimes": regimes,
        "baselines_medmnist_v2_test_acc": BASELINES, "targets": TARGETS,
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
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
