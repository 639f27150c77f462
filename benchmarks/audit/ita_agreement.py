"""How far the ITA skin-tone estimate (``dermvlm.datasets.skin_tone``) agrees with labelled Fitzpatrick types: on
every PAD-UFES-20 image in ``../shared/data/pad_ufes_20`` whose metadata gives ``fitspatrick``. Writes
``benchmarks/results/ita_agreement.json``: Spearman's rank correlation (scipy) of ITA and of the Fitzpatrick-like
type with the label, exact and within-one agreement, three-band agreement (I-II / III-IV / V-VI) with its
confusion matrix, and the images skipped with why.

    python benchmarks/audit/ita_agreement.py [--data ../shared/data/pad_ufes_20]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from dermvlm.datasets.skin_tone import band, estimate
from dermvlm.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pad_ufes_20")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ita_agreement.json")
    args = ap.parse_args()
    files = {p.name: p for p in args.data.glob("images*/*.png")}
    rows, skipped = [], Counter()
    for r in csv.DictReader((args.data / "metadata.csv").open()):
        if r["img_id"] not in files or not r["fitspatrick"]:
            continue
        e = estimate(files[r["img_id"]])
        if e.ita is None:
            skipped[e.skipped.split(" (")[0]] += 1
            continue
        rows.append({"image": r["img_id"], "fitzpatrick": int(float(r["fitspatrick"])), "ita": e.ita,
                     "estimate": e.fitzpatrick_like, "tone_group": e.tone_group})
    gold = [r["fitzpatrick"] for r in rows]
    est = [r["estimate"] for r in rows]
    bands = ["I-II", "III-IV", "V-VI"]
    gold_b, est_b = [band(g) for g in gold], [band(e) for e in est]
    rho_ita = spearmanr([-r["ita"] for r in rows], gold)
    rho_type = spearmanr(est, gold)
    result = {
        "data": "PAD-UFES-20 images present locally with a labelled Fitzpatrick type (smartphone clinical photos)",
        "n": len(rows), "skipped": dict(skipped),
        "label_counts": dict(sorted(Counter(gold).items())),
        "estimate_counts": dict(sorted(Counter(est).items())),
        "spearman_minus_ita_vs_type": {"rho": round(float(rho_ita.statistic), 3),
                                       "p": round(float(rho_ita.pvalue), 4)},
        "spearman_estimate_vs_type": {"rho": round(float(rho_type.statistic), 3),
                                      "p": round(float(rho_type.pvalue), 4)},
        "exact_agreement": round(sum(g == e for g, e in zip(gold, est, strict=True)) / len(rows), 3),
        "within_one": round(sum(abs(g - e) <= 1 for g, e in zip(gold, est, strict=True)) / len(rows), 3),
        "band_agreement": round(sum(g == e for g, e in zip(gold_b, est_b, strict=True)) / len(rows), 3),
        "band_kappa": round(float(cohen_kappa_score(gold_b, est_b, labels=bands)), 3),
        "band_confusion": {"labels": bands,
                           "rows_gold_cols_estimate": confusion_matrix(gold_b, est_b, labels=bands).tolist()},
        "per_image": rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=1))


if __name__ == "__main__":
    main()
