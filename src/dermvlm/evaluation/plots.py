"""The PNG plots of one evaluation, drawn to be read: per-class recall with 95% Wilson intervals and ``k/n`` on every
bar (a zero is a visible marker, not a missing bar), every question type's headline metrics with intervals (open
questions included), a row-normalised confusion matrix with a colour bar and the counts, accuracy by Fitzpatrick
type, and fairness by stratum as horizontal bars whose group names stay level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BLUE, RED, GREY = "tab:blue", "tab:red", "0.75"


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def save_figure(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically (a temporary file renamed) and close it."""
    import matplotlib.pyplot as plt

    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out


def _hbars(ax, names: list[str], values: list[float], cis: list[tuple[float, float]], notes: list[str],
           colours: list[str]) -> None:
    """Horizontal bars with interval whiskers, a dot where the value is 0, and a note (``k/n``) right of each."""
    y = np.arange(len(names))
    lo = np.array([v - c[0] for v, c in zip(values, cis, strict=True)]).clip(min=0)
    hi = np.array([c[1] - v for v, c in zip(values, cis, strict=True)]).clip(min=0)
    ax.barh(y, values, xerr=[lo, hi], color=colours, capsize=3, height=0.6, error_kw={"elinewidth": 1})
    zeros = [i for i, v in enumerate(values) if v == 0]
    ax.plot([0] * len(zeros), zeros, "o", color="black", markersize=4, zorder=3)
    for i, note in enumerate(notes):
        ax.text(1.03, i, note, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)


def per_class_plot(types: dict[str, Any], out: Path) -> Path | None:
    kinds = [k for k, t in types.items() if t.get("per_class")]
    if not kinds:
        return None
    import matplotlib.pyplot as plt

    sizes = [len(types[k]["per_class"]) for k in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(7, 0.9 * len(kinds) + 0.36 * sum(sizes)), squeeze=False,
                             sharex=True, layout="constrained", gridspec_kw={"height_ratios": [s + 1 for s in sizes]})
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        per = types[kind]["per_class"]
        names = [c.replace("_", " ") for c in per]
        n = [int(v["support"]) for v in per.values()]
        k = [round(v["recall"] * m) for v, m in zip(per.values(), n, strict=True)]
        values = [v["recall"] for v in per.values()]
        _hbars(ax, names, values, [wilson(a, b) for a, b in zip(k, n, strict=True)],
               [f"{a}/{b}" for a, b in zip(k, n, strict=True)], [BLUE] * len(names))
        ax.set_title(f"{kind}: per-class recall (n={types[kind]['n']}; right: correct / items of the class, a dot: "
                     "recall 0)", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("recall (95% Wilson interval)")
    return save_figure(fig, out)


def summary_plot(types: dict[str, Any], out: Path) -> Path | None:
    """Every question type's accuracy, balanced accuracy and macro-F1 (open-ended text: exact match, token F1,
    ROUGE-L) with their 95% bootstrap intervals."""
    keys = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
            "exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L"}
    rows = [(kind, key) for kind, t in types.items() for key in keys if isinstance(t.get(key), int | float)]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.8 + 0.32 * len(rows)), layout="constrained")
    values = [float(types[kind][key]) for kind, key in rows]
    cis = [tuple((types[kind].get("ci95") or {}).get(key) or (v, v)) for (kind, key), v in zip(rows, values,
                                                                                                 strict=True)]
    colours = [f"C{list(types).index(kind)}" for kind, _ in rows]
    _hbars(ax, [f"{kind} {keys[key]}" for kind, key in rows], values, cis,
           [f"{v:.2f} (n={types[kind]['n']})" for (kind, _), v in zip(rows, values, strict=True)], colours)
    ax.set_xlabel("score (95% bootstrap interval)")
    ax.set_title("metrics by question type", fontsize=10)
    return save_figure(fig, out)


def confusion_plot(confusion: dict[str, Any], kind: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    counts = np.array(confusion["matrix"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    labels, columns = confusion["labels"], confusion["columns"]
    fig, ax = plt.subplots(figsize=(2.2 + 0.75 * len(columns), 1.6 + 0.5 * len(labels)), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the gold class's items")
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), [f"{lab} (n={int(t)})" for lab, t in zip(labels, totals[:, 0], strict=True)],
                  fontsize=8)
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            if counts[i, j]:
                ax.text(j, i, f"{share[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"confusion matrix ({kind}), rows normalised", fontsize=10)
    return save_figure(fig, out)


def fitzpatrick_plot(fitz: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(fitz)
    n = [int(fitz[g]["n"]) for g in names]
    k = [round(fitz[g]["accuracy"] * m) for g, m in zip(names, n, strict=True)]
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.38 * len(names)), layout="constrained")
    _hbars(ax, names, [fitz[g]["accuracy"] for g in names], [wilson(a, b) for a, b in zip(k, n, strict=True)],
           [f"{a}/{b}" for a, b in zip(k, n, strict=True)], [BLUE] * len(names))
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.set_title("accuracy by Fitzpatrick type", fontsize=10)
    return save_figure(fig, out)


def fairness_plot(fair: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sizes = [len(f["groups"]) for f in fair.values()]
    fig, axes = plt.subplots(len(fair), 1, figsize=(7, 1.2 + 0.9 * len(fair) + 0.36 * sum(sizes)), squeeze=False,
                             sharex=True, layout="constrained", gridspec_kw={"height_ratios": [s + 1 for s in sizes]})
    for ax, (name, f) in zip(axes[:, 0], fair.items(), strict=True):
        groups = list(f["groups"])
        values = [f["groups"][g]["balanced_accuracy"] for g in groups]
        cis = [tuple((f["groups"][g].get("ci95") or {}).get("balanced_accuracy") or (v, v))
               for g, v in zip(groups, values, strict=True)]
        worst = (f.get("worst_group") or {}).get("group")
        colours = [RED if g == worst else (GREY if f["groups"][g]["n"] < f["min_n"] else BLUE) for g in groups]
        _hbars(ax, groups, values, cis, [f"n={f['groups'][g]['n']}" for g in groups], colours)
        ax.set_title(f"by {name}", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("balanced accuracy (95% bootstrap interval)")
    min_n = next(iter(fair.values()))["min_n"]
    fig.legend(handles=[Patch(color=BLUE, label="group"), Patch(color=RED, label="worst group"),
                        Patch(color=GREY, label=f"under {min_n} items (not ranked)")],
               loc="outside upper center", ncol=3, fontsize=8, frameon=False, title="fairness by stratum",
               title_fontsize=10)
    return save_figure(fig, out)


def plots(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every plot the evaluation's metrics allow, written (atomically) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    m = result["metrics"]
    types = m["types"]
    primary = types.get(m["primary"] or "", {})
    made = [per_class_plot(types, out_dir / "per_class.png"), summary_plot(types, out_dir / "summary.png")]
    if primary.get("confusion"):
        made.append(confusion_plot(primary["confusion"], m["primary"], out_dir / "confusion_matrix.png"))
    fitz = primary.get("strata", {}).get("fitzpatrick")
    if fitz:
        made.append(fitzpatrick_plot(fitz, out_dir / "per_fitzpatrick.png"))
    fair = {k: v for k, v in (primary.get("fairness") or {}).items() if v.get("groups")}
    if fair:
        made.append(fairness_plot(fair, out_dir / "fairness.png"))
    return [p for p in made if p is not None]
