"""``dermvlm data audit``: a ranked audit of a recipe's images, worst first, for a person to scan.

- **duplicates**: exact (same pixels) and near (perceptual hash) pairs, within and across splits;
- **off-topic**: images far from every other image of the dataset (a robust z-score of the distance to their
  nearest neighbours in colour/layout features), blank, or heavily over/under-exposed;
- **label errors**: out-of-sample class probabilities, cross-validated, from a logistic regression on colour and
  layout features (``classifier="features"``, seconds), a small CNN (``"cnn"``, ``audit.cnn_probe``: minutes), or
  the mean of both (``"both"``); images ranked by cleanlab's label quality score ``self_confidence`` (the
  out-of-sample probability of their own label);
- **conflicts**: the same image under two labels (``datasets.conflicts``);
- image facts (ITA tone, artefact tags) per image.

Writes ``audit.json``, ``audit.md``, ``audit.html`` (thumbnails, worst first, each image named by its id), one
contact sheet per ranking, and ``exclude.yaml`` — the candidates over each ranking's threshold with why (label-error
candidates of val/test are held for review instead) — which a recipe consumes as ``exclude: exclude.yaml``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from dermvlm.config import RecipeConfig
from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.conflicts import resolve_conflicts
from dermvlm.datasets.contact_sheet import contact_sheet
from dermvlm.datasets.dedup import find_duplicates
from dermvlm.datasets.image_facts import image_facts
from dermvlm.datasets.skin_tone import lab, rgb_array
from dermvlm.datasets.split_assignment import SplitTable, assign_splits
from dermvlm.io import atomic_dir
from dermvlm.knowledge import load_graph
from dermvlm.recipes.build import collect_records, load_checked

OFF_TOPIC_THRESHOLD = 8.0  # robust z of the distance to the nearest images (blank or 90% clipped: 2x this)
# self-confidence under this goes to exclude.yaml, per classifier (set on the planted-fault DermaMNIST set of seed 0,
# checked on seed 1: benchmarks/audit/README.md); the CNN's probabilities are smoother than the regression's
LABEL_ERROR_THRESHOLDS = {"features": 0.02, "cnn": 0.05, "both": 0.05}
CLASSIFIERS = tuple(LABEL_ERROR_THRESHOLDS)
# below these, a cross-validated label-error ranking is noise: its candidates are held for review, never proposed
MIN_RANKING_IMAGES, MIN_RANKING_PER_CLASS = 50, 10
THUMB = 64


def image_id(path: str) -> str:
    return Path(path).stem


def blank_or_clipped(image: Image.Image) -> float:
    """1 for an image without contrast, else the share of its pixels clipped to black or white (at 0.9 or more the
    image counts as off-topic, whatever its neighbours; dermoscope frames clip far less)."""
    rgb = rgb_array(image, max_side=THUMB)
    if float(rgb.reshape(-1, 3).std(axis=0).max()) < 2:
        return 1.0
    return float(((rgb.max(axis=2) < 8) | (rgb.min(axis=2) > 248)).mean())


def outlier_scores(x: np.ndarray, k: int = 5) -> np.ndarray:
    """How far each image lies from the rest of the dataset (in the spirit of SelfClean's off-topic ranking): the
    mean distance to its ``k`` nearest neighbours in standardised colour/layout features, as a robust z-score
    (median and MAD over the dataset)."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(x)
    k = min(k, len(x) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    d = dist[:, 1:].mean(axis=1)
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) or 1e-6
    return (d - med) / (1.4826 * mad)


def features(image: Image.Image) -> np.ndarray:
    """Colour and layout features for the label-error classifier: an 8x8 CIELAB thumbnail and 8-bin histograms
    of L*, a*, b*."""
    c = lab(np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX)))
    full = lab(rgb_array(image, max_side=THUMB))
    hists = [np.histogram(full[..., i], bins=8, range=r, density=True)[0]
             for i, r in enumerate([(0, 100), (-40, 60), (-40, 60)])]
    return np.concatenate([c.reshape(-1) / 50.0] + [h * 10 for h in hists]).astype(np.float32)


def feature_proba(x: np.ndarray, labels: list[str], folds: int, seed: int) -> np.ndarray:
    """Out-of-sample class probabilities (columns in sorted class order) from a stratified k-fold logistic regression
    on the colour/layout features; classes with fewer images than folds are scored with the folds they allow."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = max(2, min(folds, min(Counter(labels).values())))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.5))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a capped lbfgs is enough for a ranking; its warning would flood the console
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(model, x, labels, cv=cv, method="predict_proba")


def label_quality(proba: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """cleanlab's ``self_confidence`` label quality of each image (the probability of its own label; low is
    suspect) and the predicted label."""
    from cleanlab.rank import get_label_quality_scores

    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab in labels])
    quality = get_label_quality_scores(y, proba, method="self_confidence")
    return quality, [classes[i] for i in proba.argmax(axis=1)]


def label_probabilities(classifier: str, x: np.ndarray, images: list[Image.Image], labels: list[str], folds: int,
                        seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Out-of-sample probabilities per classifier that ``classifier`` uses (``features``, ``cnn``), and what the
    CNN cost (fold accuracy, seconds)."""
    if classifier not in CLASSIFIERS:
        raise DatasetError(f"audit: unknown classifier {classifier!r}; use one of {', '.join(CLASSIFIERS)}")
    out: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {"classifier": classifier}
    if classifier in ("features", "both"):
        out["features"] = feature_proba(x, labels, folds, seed)
    if classifier in ("cnn", "both"):
        from dermvlm.audit.cnn_probe import cross_validated_proba

        probe = cross_validated_proba(images, labels, folds, seed)
        out["cnn"] = probe.proba
        info["cnn"] = {"fold_accuracy": [round(a, 4) for a in probe.fold_accuracy],
                       "seconds": round(probe.seconds, 1)}
    return out, info


def audit(recipe: RecipeConfig, out: str | Path, overrides: list[dict] | None = None, base: Path | None = None,
          folds: int = 5, top: int = 48, classifier: str = "features", splits: SplitTable | None = None
          ) -> dict[str, Any]:
    """Audit the recipe's images (every split) and write the report folder; returns ``audit.json``'s content.
    ``classifier`` is the label-error classifier: ``features`` (seconds), ``cnn`` or ``both`` (minutes). Splits
    are the build's (``splits``: its ``splits.csv``) or, without one, the same pure function the build uses."""
    kg = load_graph()
    records, skipped, _ = collect_records(recipe, kg, overrides, base)
    keep, conflicts = resolve_conflicts(records, lambda i, r: str(Path(r.image).resolve()), "first")
    records = [records[i] for i in keep]
    assign_splits(records, recipe.split.val, recipe.split.test, recipe.seed, splits)
    kept, images = load_checked(records, recipe, skipped)
    if len(kept) < 2:
        raise DatasetError("audit: fewer than two usable images")
    dup = find_duplicates([c.sha256 for c in images], [c.phash for c in images], recipe.dedup.near_threshold)
    ids = [image_id(r.image) for r in kept]
    x = np.stack([features(c.image) for c in images])
    outlier = outlier_scores(x)
    rows: list[dict[str, Any]] = []
    for r, c, i, z in zip(kept, images, ids, outlier, strict=True):
        facts = image_facts(c.image)
        clipped = blank_or_clipped(c.image)
        rows.append({"id": i, "image": r.image, "label": r.label, "split": r.split,
                     "off_topic": round(float(max(z, 2 * OFF_TOPIC_THRESHOLD if clipped >= 0.9 else z)), 3),
                     "clipped": round(clipped, 4), "tone_group": facts["tone_group"],
                     "skin_tone_ita": facts["skin_tone_ita"], "artefacts": facts["artefacts"]})
    labels = [r.label for r in kept]
    threshold = LABEL_ERROR_THRESHOLDS.get(classifier)
    probe_info: dict[str, Any] = {"classifier": classifier}
    if len(set(labels)) >= 2 and min(Counter(labels).values()) >= 2:
        probas, probe_info = label_probabilities(classifier, x, [c.image for c in images], labels, folds,
                                                 recipe.seed)
        quality, predicted = label_quality(sum(probas.values()) / len(probas), labels)
        for row, q, guess in zip(rows, quality, predicted, strict=True):
            row["label_confidence"], row["predicted"] = round(float(q), 4), guess
        if len(probas) > 1:  # each classifier's own score too, so a person can see where they disagree
            for name, proba in probas.items():
                for row, q in zip(rows, label_quality(proba, labels)[0], strict=True):
                    row[f"label_confidence_{name}"] = round(float(q), 4)
    pairs = []
    for i, j in dup.exact_pairs:
        pairs.append({"a": ids[i], "b": ids[j], "kind": "exact", "distance": 0,
                      "splits": [kept[i].split, kept[j].split]})
    for i, j, d in dup.near_pairs:
        pairs.append({"a": ids[i], "b": ids[j], "kind": "near", "distance": d,
                      "splits": [kept[i].split, kept[j].split]})
    for p in pairs:
        p["cross_split"] = p["splits"][0] != p["splits"][1]
    for i, j in dup.exact_pairs:  # the same pixels under two labels
        if kept[i].label != kept[j].label:
            conflicts.append((kept[j].image, f"same pixels as {ids[i]} ({kept[i].label}) but labelled "
                                             f"{kept[j].label}"))
    pairs.sort(key=lambda p: (not p["cross_split"], p["distance"]))
    rank_off = sorted(rows, key=lambda r: -r["off_topic"])
    rank_lab = sorted((r for r in rows if "label_confidence" in r), key=lambda r: r["label_confidence"])
    caveat = ranking_caveat(labels)
    exclude, held = _exclusions(rows, pairs, threshold, propose_label_errors=caveat is None)
    result = {
        "recipe": recipe.name, "images": len(rows), "skipped": len(skipped),
        "by_split": dict(Counter(r["split"] for r in rows)),
        "duplicates": {"exact_pairs": len(dup.exact_pairs), "near_pairs": len(dup.near_pairs),
                       "cross_split_pairs": sum(p["cross_split"] for p in pairs), "pairs": pairs},
        "conflicts": [{"image": f, "why": w} for f, w in conflicts],
        "off_topic": [{k: r[k] for k in ("id", "label", "split", "off_topic")} for r in rank_off[:top]],
        "label_errors": [{k: r[k] for k in ("id", "label", "predicted", "split", "label_confidence")}
                         for r in rank_lab[:top]],
        "tone_groups": dict(Counter(r["tone_group"] or "skipped" for r in rows)),
        "artefacts": dict(Counter(t for r in rows for t in r["artefacts"])),
        "exclude": exclude, "held_for_review": held, "per_image": rows,
        "label_classifier": probe_info, "label_error_caveat": caveat,
        "thresholds": {"off_topic": OFF_TOPIC_THRESHOLD, "label_confidence": threshold},
    }
    with atomic_dir(Path(out), command="data audit") as tmp:
        (tmp / "audit.json").write_text(json.dumps(result, indent=1) + "\n")
        (tmp / "exclude.yaml").write_text(yaml.safe_dump({"exclude": exclude}, sort_keys=False))
        by_id = dict(zip(ids, images, strict=True))
        contact_sheet([(by_id[r["id"]].image, f"{r['off_topic']:.1f} {r['id']}") for r in rank_off[:top]],
                      tmp / "off_topic.png")
        if rank_lab:
            contact_sheet([(by_id[r["id"]].image, f"{r['label_confidence']:.3f} {r['id']}") for r in rank_lab[:top]],
                          tmp / "label_errors.png")
        if pairs:
            contact_sheet([(by_id[p[k]].image, f"{p['kind'][0]}{p['distance']} {p[k]}") for p in pairs[: top // 2]
                           for k in ("a", "b")], tmp / "duplicates.png")
        (tmp / "audit.md").write_text(markdown(result))
        (tmp / "audit.html").write_text(html_page(result, by_id, rank_off[:top], rank_lab[:top], pairs[: top // 2]))
    return result


def ranking_caveat(labels: list[str]) -> str | None:
    """Why the label-error ranking is too thin to act on (too few images, or a class too small), or None."""
    counts = Counter(labels)
    fewest = min(counts.values()) if counts else 0
    if len(labels) >= MIN_RANKING_IMAGES and fewest >= MIN_RANKING_PER_CLASS:
        return None
    rarest = min(counts, key=lambda k: (counts[k], k)) if counts else "-"
    return (f"the label-error ranking rests on {len(labels)} images ({len(counts)} classes, the smallest {rarest} "
            f"with {fewest}); below {MIN_RANKING_IMAGES} images or {MIN_RANKING_PER_CLASS} per class its "
            "probabilities mean little: its candidates are held for review, none proposed")


def _exclusions(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], threshold: float,
                propose_label_errors: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What ``exclude.yaml`` proposes, and what is held for review instead: the non-test copy of every cross-split
    duplicate and the second copy of every exact duplicate, off-topic images over threshold, and label-error
    candidates under threshold **in the train split**. Label-error candidates of val and test are held for review,
    not proposed: dropping the items a classifier disagrees with from an evaluation split inflates its metrics
    (relabel them after review instead); so are all of them when ``propose_label_errors`` is off (small data)."""
    out: dict[str, dict[str, Any]] = {}
    held: list[dict[str, Any]] = []
    split = {r["id"]: r["split"] for r in rows}
    for p in pairs:
        if p["cross_split"]:
            drop = p["b"] if split[p["a"]] == "test" or (split[p["b"]] == "train" and split[p["a"]] != "train") \
                else p["a"]
            keep = p["a"] if drop == p["b"] else p["b"]
            out.setdefault(drop, {"image": drop, "why": f"{p['kind']} duplicate of {keep} ({split[keep]})"})
        elif p["kind"] == "exact":
            out.setdefault(p["b"], {"image": p["b"], "why": f"exact duplicate of {p['a']}"})
    for r in rows:
        if r["off_topic"] >= OFF_TOPIC_THRESHOLD:
            out.setdefault(r["id"], {"image": r["id"],
                                     "why": f"off-topic: {r['off_topic']:.1f} robust SDs from its nearest images"})
        if r.get("label_confidence", 1.0) < threshold:
            entry = {"image": r["id"], "why": f"label {r['label']} has out-of-sample probability "
                                              f"{r['label_confidence']:.3f} (looks like {r['predicted']})"}
            if r["split"] in ("train", None) and propose_label_errors:
                out.setdefault(r["id"], entry)
            elif r["id"] not in out:
                held.append(entry | {"split": r["split"]})
    return list(out.values()), held


def markdown(result: dict[str, Any]) -> str:
    d = result["duplicates"]
    limits = result["thresholds"]
    low = sum(r.get("label_confidence", 1) < limits["label_confidence"] for r in result["per_image"])
    lines = [f"# Data audit: {result['recipe']}", "",
             f"{result['images']} images ({', '.join(f'{k} {v}' for k, v in result['by_split'].items())}); "
             f"{result['skipped']} skipped before the audit.", "",
             f"- duplicates: {d['exact_pairs']} exact and {d['near_pairs']} near pairs, "
             f"**{d['cross_split_pairs']} across splits**",
             f"- conflicts (one image, two labels): {len(result['conflicts'])}",
             f"- off-topic over {result['thresholds']['off_topic']}: "
             f"{sum(r['off_topic'] >= result['thresholds']['off_topic'] for r in result['per_image'])}",
             f"- label-error candidates under {result['thresholds']['label_confidence']} "
             f"({_classifier_line(result['label_classifier'])}): {low}"
             + (f". **Too few images:** {result['label_error_caveat']}" if result.get("label_error_caveat") else ""),
             f"- tone groups (ITA estimate): {result['tone_groups']}",
             f"- artefact tags: {result['artefacts'] or 'none'}",
             f"- proposed exclusions: {len(result['exclude'])} in `exclude.yaml` (use `exclude: exclude.yaml` in the "
             "recipe after checking them)",
             f"- held for review, not proposed: {len(result['held_for_review'])} label-error candidates "
             "(`held_for_review` in `audit.json`): of val/test always, since dropping what a classifier disagrees "
             "with from an evaluation split inflates its metrics (relabel them after review instead), and of train "
             "when the ranking rests on too few images", "",
             "Pictures: `audit.html` (worst first), `off_topic.png`, `label_errors.png`, `duplicates.png`.", ""]
    if result["label_errors"]:
        lines += ["## Label-error candidates (lowest out-of-sample probability of their label)", "",
                  "| image | label | looks like | split | probability |", "|---|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['label']} | {r['predicted']} | {r['split']} | {r['label_confidence']:.3f} |"
                  for r in result["label_errors"][:20]]
    lines += ["", "## Off-topic candidates", "", "| image | label | split | score |", "|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['label']} | {r['split']} | {r['off_topic']:.2f} |" for r in result["off_topic"][:20]]
    if d["pairs"]:
        lines += ["", "## Duplicate pairs (cross-split first)", "", "| a | b | kind | distance | splits |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['kind']} | {p['distance']} | {' / '.join(p['splits'])} |"
                  for p in d["pairs"][:20]]
    return "\n".join(lines) + "\n"


def _classifier_line(info: dict[str, Any]) -> str:
    name = {"features": "logistic regression on colour/layout features", "cnn": "small CNN",
            "both": "mean of the feature regression and a small CNN"}[info["classifier"]]
    cnn = info.get("cnn")
    if cnn:
        name += (f"; CNN fold accuracy {min(cnn['fold_accuracy']):.2f}-{max(cnn['fold_accuracy']):.2f}, "
                 f"{cnn['seconds']:.0f} s")
    return f"out-of-sample, {name}"


def _thumb(image: Image.Image) -> str:
    im = image.convert("RGB")
    im.thumbnail((96, 96))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def html_page(result, by_id, off, lab_rows, pairs) -> str:
    def card(i: str, caption: str) -> str:
        return (f'<figure><img src="{_thumb(by_id[i].image)}" alt="{html.escape(i)}">'
                f"<figcaption>{html.escape(i)}<br>{html.escape(caption)}</figcaption></figure>")

    parts = [f"<!doctype html><meta charset=utf-8><title>Data audit: {html.escape(result['recipe'])}</title>",
             "<style>figure{display:inline-block;margin:4px;width:110px;font:11px sans-serif}"
             "img{width:96px;height:96px;object-fit:contain;background:#eee}</style>",
             f"<h1>Data audit: {html.escape(result['recipe'])}</h1><p>{result['images']} images, worst first.</p>",
             "<h2>Label-error candidates</h2>"]
    parts += [card(r["id"], f"{r['label']} → {r.get('predicted', '?')} p={r['label_confidence']:.3f}")
              for r in lab_rows]
    parts += ["<h2>Off-topic candidates</h2>"] + [card(r["id"], f"{r['label']} score {r['off_topic']:.2f}")
                                                 for r in off]
    parts += ["<h2>Duplicate pairs</h2>"] + [card(p[k], f"{p['kind']} d={p['distance']} {'/'.join(p['splits'])}")
                                            for p in pairs for k in ("a", "b")]
    return "\n".join(parts) + "\n"
