"""``dermvlm data inspect``: what a built dataset folder holds, with examples and a label-distribution plot."""

from __future__ import annotations

import json
from pathlib import Path


def inspect_folder(folder: str | Path, examples: int = 1, plot: str | Path | None = None) -> str:
    from datasets import load_from_disk

    folder = Path(folder)
    stats_path = folder / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{folder}: not a dataset built by 'dermvlm data build' (no stats.json)")
    stats = json.loads(stats_path.read_text())
    lines = [f"{folder}: recipe {stats['recipe']} ({stats['recipe_hash']}), {stats['records']} images, "
             f"skipped {stats['skipped']}"]
    for kind in sorted(p.name for p in folder.iterdir() if (p / "dataset_dict.json").exists()):
        dd = load_from_disk(str(folder / kind))
        lines.append(f"\n[{kind}] " + ", ".join(f"{s}: {len(d)}" for s, d in dd.items()))
        first = dd[next(iter(dd))]
        for i in range(min(examples, len(first))):
            row = {k: v for k, v in first[i].items() if k != "images"}
            lines.append(json.dumps(row, ensure_ascii=False, default=str)[:1200])
    out = Path(plot) if plot else folder / "labels.png"
    _plot_labels(stats["labels_by_split"], out)
    lines.append(f"\nlabel distribution plot: {out}")
    return "\n".join(lines)


def _plot_labels(by_split: dict[str, dict[str, int]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({lab for c in by_split.values() for lab in c})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4))
    width = 0.8 / max(1, len(by_split))
    for i, (split, counts) in enumerate(by_split.items()):
        ax.bar([x + i * width for x in range(len(labels))], [counts.get(lab, 0) for lab in labels], width,
               label=split)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("label distribution by split")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
