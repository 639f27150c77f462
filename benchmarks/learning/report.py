"""Tabulate and plot the learning benchmark (after ``run.py``): ``benchmarks/results/learning.json``, a markdown
table (``benchmarks/results/learning.md``) and learning-curve plots (``benchmarks/results/learning/*.png``).

Per arm: accuracy, balanced accuracy and macro-F1 on the DermaMNIST test split, mean over seeds with a 95%
bootstrap interval of that mean (test items resampled within each seed), val beside it, per-class recall, wall time
and peak memory per stage; the paired bootstrap difference of GRPO++ against SFT-only and plain GRPO; the published
MedMNIST v2 baselines beside them.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import ABLATIONS, BUDGET, MAIN_ARMS, ROOT

from dermvlm.evaluation import metrics as M

# MedMNIST v2 (Yang et al., Scientific Data 2023), DermaMNIST test ACC: see ../shared/data/dermamnist/SOURCES.md.
BASELINES = {"ResNet-18 (28 px)": 0.735, "ResNet-18 (224 px)": 0.754, "ResNet-50 (28 px)": 0.735,
             "auto-sklearn": 0.719, "AutoKeras": 0.749, "Google AutoML Vision": 0.768}
TARGETS = {"accuracy": 0.75, "max_params": 20_000_000, "max_train_minutes": 60, "grpo_plus_over_sft_balanced": 0.03}
ARM_ORDER = ["pretrain", *MAIN_ARMS, *ABLATIONS]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def load_predictions(run: Path, suite: str) -> list[dict[str, Any]] | None:
    path = run / "eval" / suite / "predictions.jsonl"
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _encode(y_true: list[str], y_pred: list[str]):
    import numpy as np

    classes = sorted(set(y_true))
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


@functools.cache
def _graph():
    from dermvlm.knowledge import load_graph

    return load_graph()


def pairs(preds: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(gold, predicted) classes of open answers, read exactly as the evaluation reads them."""
    from dermvlm.evaluation.parsing import parse
    from dermvlm.evaluation.score import open_label_pair

    kg = _graph()
    rows = [open_label_pair(p["label"], parse(p.get("response"), p, kg).prediction, kg) for p in preds]
    return [t for t, _ in rows], [q for _, q in rows]


def summarize_arm(runs: dict[int, Path]) -> dict[str, Any]:
    per_seed: dict[int, Any] = {}
    seed_pairs: list[tuple[list[str], list[str]]] = []
    for seed, run in sorted(runs.items()):
        test = load_predictions(run, "learning_test")
        val = load_predictions(run, "learning_val")
        if test is None:
            continue
        yt, yp = pairs(test)
        seed_pairs.append((yt, yp))
        entry: dict[str, Any] = {"test": {m: round(getattr(M, m)(yt, yp), 4) for m in METRICS}}
        entry["test"]["ci95"] = {m: fast_ci(m, yt, yp, 1000, seed) for m in METRICS}
        entry["test"]["per_class_recall"] = {k: round(v["recall"], 4) for k, v in M.per_class(yt, yp).items()}
        if val is not None:
            vt, vp = pairs(val)
            entry["val"] = {m: round(getattr(M, m)(vt, vp), 4) for m in METRICS}
        entry["stages"] = stage_info(run)
        per_seed[seed] = entry
    if not per_seed:
        return {}
    mean = {m: round(sum(e["test"][m] for e in per_seed.values()) / len(per_seed), 4) for m in METRICS}
    spread = {m: [min(e["test"][m] for e in per_seed.values()), max(e["test"][m] for e in per_seed.values())]
              for m in METRICS}
    ci = {m: mean_ci(m, seed_pairs, 1000, 0) for m in METRICS}
    classes = sorted({c for e in per_seed.values() for c in e["test"]["per_class_recall"]})
    recall = {c: round(sum(e["test"]["per_class_recall"].get(c, 0.0) for e in per_seed.values()) / len(per_seed), 4)
              for c in classes}
    val_mean = None
    if all("val" in e for e in per_seed.values()):
        val_mean = {m: round(sum(e["val"][m] for e in per_seed.values()) / len(per_seed), 4) for m in METRICS}
    seconds = [sum(s.get("seconds", 0) for s in e["stages"].values()) for e in per_seed.values()]
    return {"seeds": sorted(per_seed), "test_mean": mean, "test_seed_range": spread, "test_ci95": ci,
            "val_mean": val_mean, "per_class_recall_mean": recall,
            "post_training_seconds_mean": round(sum(seconds) / len(seconds), 1), "per_seed": per_seed}


def stage_info(run: Path) -> dict[str, Any]:
    out = {}
    for done in sorted(run.glob("*/done.json")):
        info = json.loads(done.read_text())
        out[done.parent.name] = {k: info.get(k) for k in ("kind", "steps", "seconds", "peak_rss_mb", "first_loss",
                                                           "last_loss", "reward_start", "reward_end", "pairs")}
    return out


def paired_delta(a_runs: dict[int, Path], b_runs: dict[int, Path], metric: str, n: int = 1000) -> dict[str, Any]:
    """Mean over shared seeds of metric(a) - metric(b), with a paired bootstrap over test items."""
    seeds = sorted(set(a_runs) & set(b_runs))
    data = []
    for s in seeds:
        a, b = load_predictions(a_runs[s], "learning_test"), load_predictions(b_runs[s], "learning_test")
        if a is None or b is None:
            continue
        bmap = {p["id"]: p for p in b}
        common = [p for p in a if p["id"] in bmap]
        data.append((pairs(common), pairs([bmap[p["id"]] for p in common])))
    if not data:
        return {}
    import numpy as np

    fn = getattr(M, metric)
    point = sum(fn(*da) - fn(*db) for da, db in data) / len(data)
    rng = np.random.default_rng(0)
    encoded = []
    for (ta, pa), (_, pb) in data:
        t, a, k = _encode(ta, pa)
        _, b, _ = _encode(ta, pb)
        encoded.append((t, a, b, k))
    draws = []
    for _ in range(n):
        total = 0.0
        for t, a, b, k in encoded:
            i = rng.integers(0, len(t), len(t))
            total += _fast(metric, t[i], a[i], k) - _fast(metric, t[i], b[i], k)
        draws.append(total / len(data))
    return {"delta": round(point, 4),
            "ci95": [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)],
            "seeds": seeds}


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Per stage, the logged training loss (SFT, DPO) or mean reward (GRPO) by step."""
    out = {}
    for hist in sorted(run.glob("*/log_history.json")):
        rows = json.loads(hist.read_text())
        key = "reward" if any("reward" in r for r in rows) else "loss"
        out[f"{hist.parent.name}:{key}"] = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
    return out


def plot(arms: dict[str, dict[int, Path]], summary: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # Pretrain loss per seed.
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for seed, run in sorted(arms.get("pretrain", {}).items()):
        for pts in curves(run).values():
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"seed {seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("SFT loss")
    ax.set_title("pretrain (micro, from scratch)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "pretrain_loss.png", dpi=110)
    plt.close(fig)
    written.append(str(out_dir / "pretrain_loss.png"))
    # Post-training curves, one panel per arm, one line per seed and stage.
    shown = [a for a in ARM_ORDER if a != "pretrain" and a in arms]
    if shown:
        cols = 4
        rows = (len(shown) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, arm in zip(axes.flat, shown, strict=False):
            for seed, run in sorted(arms[arm].items()):
                for name, pts in curves(run).items():
                    if pts:
                        ax.plot(*zip(*pts, strict=True), label=f"s{seed} {name}")
            ax.set_title(arm)
            ax.set_xlabel("step")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / "post_training_curves.png", dpi=110)
        plt.close(fig)
        written.append(str(out_dir / "post_training_curves.png"))
    # Test metrics per arm beside the published baselines.
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [a for a in ARM_ORDER if summary.get(a)]
    for j, metric in enumerate(METRICS):
        xs = [i + (j - 1) * 0.27 for i in range(len(names))]
        ys = [summary[a]["test_mean"][metric] for a in names]
        cis = [summary[a]["test_ci95"][metric] or [y, y] for a, y in zip(names, ys, strict=True)]
        err = [[max(0.0, y - lo) for y, (lo, _) in zip(ys, cis, strict=True)],
               [max(0.0, hi - y) for y, (_, hi) in zip(ys, cis, strict=True)]]
        ax.bar(xs, ys, width=0.27, yerr=err, label=metric, capsize=2)
    for label, acc in (("ResNet-18 28px", 0.735), ("AutoML Vision", 0.768)):
        ax.axhline(acc, ls="--", lw=0.8, color="grey")
        ax.text(len(names) - 0.5, acc, f"{label} ACC {acc}", fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("DermaMNIST test (micro model, served by vLLM); 95% bootstrap CI")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "test_metrics.png", dpi=110)
    plt.close(fig)
    written.append(str(out_dir / "test_metrics.png"))
    return written


def fmt_ci(v: float, ci: list[float] | None) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    lines = ["| arm | seeds | test accuracy | test balanced acc. | test macro-F1 | val acc. | val bal. acc. | "
             "training s |", "|---|---|---|---|---|---|---|---|"]
    for arm in ARM_ORDER:
        a = arms.get(arm)
        if not a:
            continue
        t, ci, v = a["test_mean"], a["test_ci95"], a["val_mean"] or {}
        lines.append(f"| {arm} | {len(a['seeds'])} | {fmt_ci(t['accuracy'], ci['accuracy'])} | "
                     f"{fmt_ci(t['balanced_accuracy'], ci['balanced_accuracy'])} | "
                     f"{fmt_ci(t['macro_f1'], ci['macro_f1'])} | {v.get('accuracy', float('nan')):.3f} | "
                     f"{v.get('balanced_accuracy', float('nan')):.3f} | {a['post_training_seconds_mean']} |")
    maj = result.get("majority_class")
    if maj:
        lines.append(f"| always the majority class ({maj['class']}) | – | {maj['accuracy']:.3f} | "
                     f"{1 / maj['classes']:.3f} | – | – | – | – |")
    for name, acc in BASELINES.items():
        lines.append(f"| MedMNIST v2: {name} | – | {acc:.3f} | – | – | – | – | – |")
    classes = sorted({c for a in arms.values() if a for c in a["per_class_recall_mean"]})
    lines += ["", "Per-class test recall (mean over seeds):", "",
              "| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for arm in ARM_ORDER:
        a = arms.get(arm)
        if a:
            lines.append(f"| {arm} | " + " | ".join(f"{a['per_class_recall_mean'].get(c, 0):.3f}" for c in classes)
                         + " |")
    lines += ["", "Paired differences on test (mean over seeds, 95% paired bootstrap CI):", ""]
    for key, d in result["comparisons"].items():
        if d:
            lines.append(f"- {key}: {d['delta']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] (seeds {d['seeds']})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-readme", dest="readme", action="store_false", help="leave README.md's table as it is")
    args = ap.parse_args()
    from dermvlm.manifest import versions

    arms: dict[str, dict[int, Path]] = {}
    for run in sorted(p for p in args.runs.glob("s*-*") if p.is_dir()):
        seed, arm = run.name.split("-", 1)
        arms.setdefault(arm, {})[int(seed[1:])] = run
    summary = {arm: summarize_arm(runs) for arm, runs in arms.items()}
    comparisons = {}
    for metric in ("balanced_accuracy", "accuracy"):
        for a, b in (("grpo_plus", "sft_only"), ("grpo_plus", "plain_grpo"), ("dermiq", "sft_only"),
                     ("plain_grpo", "sft_only")):
            if a in arms and b in arms:
                comparisons[f"{a} - {b} ({metric})"] = paired_delta(arms[a], arms[b], metric)
    for ablation in ABLATIONS:  # each switch off against GRPO++ with every switch on, same seed
        if ablation in arms and "grpo_plus" in arms:
            comparisons[f"{ablation} - grpo_plus (balanced_accuracy)"] = paired_delta(
                arms[ablation], arms["grpo_plus"], "balanced_accuracy")
    params = None
    base = next(iter(arms.get("pretrain", {}).values()), None)
    if base is not None and (base / "base" / "dermvlm_nano.json").exists():
        params = json.loads((base / "base" / "dermvlm_nano.json").read_text()).get("parameters")
    pretrain_minutes = [e["stages"].get("pretrain", {}).get("seconds", 0) / 60
                        for e in summary.get("pretrain", {}).get("per_seed", {}).values()]
    result = {
        "benchmark": "DermaMNIST learning benchmark (micro model from scratch, served by vLLM)",
        "config": "configs/dermamnist-micro.yaml", "budget_post_training_sequences": BUDGET,
        "parameters": params, "pretrain_minutes": [round(m, 1) for m in pretrain_minutes],
        "arms": summary, "comparisons": comparisons, "baselines_medmnist_v2_test_acc": BASELINES, "targets": TARGETS,
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                    "processor": platform.processor()},
        "versions": versions(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    any_run = next((r for runs in arms.values() for r in runs.values()
                    if (r / "eval" / "learning_test" / "predictions.jsonl").exists()), None)
    if any_run is not None:
        gold = [p["label"] for p in load_predictions(any_run, "learning_test")]
        top = max(set(gold), key=gold.count)
        result["majority_class"] = {"class": top, "accuracy": round(gold.count(top) / len(gold), 4),
                                    "classes": len(set(gold))}
    result["plots"] = plot(arms, summary, args.out / "learning")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "learning.md").write_text(table)
    if args.readme:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from readme_tables import update_readme

        update_readme("learning", table)
    print(table)


if __name__ == "__main__":
    main()
