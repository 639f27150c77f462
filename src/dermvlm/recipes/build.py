"""Build a recipe: sources → image checks → splits → duplicates and leakage → each kind → DatasetDicts on disk.

The output folder holds one ``DatasetDict`` per kind (``<out>/<kind>/``, splits as in the recipe), ``stats.json``,
``skipped.csv`` (every file left out, with why) and ``README.md`` (the dataset card: counts, label distribution,
recipe hash, sources and licences). It is written to a temporary sibling and renamed at the end: a failed or
killed build leaves nothing half-written at the output path. Same recipe and seed → the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dermvlm import safe_yaml
from dermvlm.config import RecipeConfig
from dermvlm.data_root import rerooted
from dermvlm.datasets.adapters import SOURCES, load_source
from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.conflicts import resolve_conflicts
from dermvlm.datasets.dedup import find_duplicates, resolve
from dermvlm.datasets.images import ImageProblem, load_image
from dermvlm.datasets.records import Record
from dermvlm.datasets.small_data import small_data_warnings
from dermvlm.datasets.split_assignment import (
    SPLITS_FILE,
    SplitTable,
    assign_splits,
    split_change,
    split_rows,
    splits_csv,
)
from dermvlm.datasets.splits import check_leakage
from dermvlm.io import atomic_dir
from dermvlm.knowledge import KGScorer, load_graph
from dermvlm.knowledge.grounding import RecordFacts
from dermvlm.progress import ProgressLine
from dermvlm.recipes.kinds import BUILDERS, SFT_KINDS, Context


@dataclass
class BuildResult:
    out: Path
    stats: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_change: str | None = None  # one line when a rebuild moved images between splits (a new seed/fractions)


def recipe_hash(recipe: RecipeConfig) -> str:
    """The recipe's content key. Fields added later enter it only when set, so existing builds keep their keys."""
    data = recipe.model_dump()
    if not data.get("exclude"):
        data.pop("exclude", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _features(kind: str):
    from datasets import Features, Image, List, Value

    message = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
    common = {"images": List(Image())}
    if kind in SFT_KINDS:
        return Features({**common, "messages": message, "label": Value("string"), "kind": Value("string"),
                         "question_type": Value("string")})
    if kind == "image_label":
        return Features({**common, "label": Value("string"), "label_name": Value("string"),
                         "dataset": Value("string"), "site": Value("string"), "fitzpatrick": Value("int64")})
    if kind == "grpo_prompt":
        return Features({**common, "prompt": message, "label": Value("string"), "label_name": Value("string"),
                         "category_path": List(Value("string")), "options": List(Value("string")),
                         "answer": Value("string"), "question_type": Value("string"), "hint": Value("string"),
                         "difficulty": Value("float64"), "class_weight": Value("float64"), "site": Value("string"),
                         "fitzpatrick": Value("int64"), "record_facts": Value("string")})
    if kind == "preference_pair":
        return Features({**common, "prompt": message, "chosen": message, "rejected": message,
                         "perturbation": Value("string"), "label": Value("string"),
                         "chosen_score": Value("float64"), "rejected_score": Value("float64")})
    return Features({**common, "id": Value("string"), "question": Value("string"), "options": List(Value("string")),
                     "answer": Value("string"), "type": Value("string"), "label": Value("string"),
                     "label_name": Value("string"), "dataset": Value("string"), "split": Value("string"),
                     "group_id": Value("string"), "image_id": Value("string"), "fitzpatrick": Value("int64"),
                     "fitzpatrick_group": Value("string"), "site": Value("string"), "malignancy": Value("string"),
                     "source_label": Value("string"), "record_facts": Value("string"),
                     "skin_tone_ita": Value("float64"),
                     "tone_group": Value("string"), "artefacts": List(Value("string"))})


PATH_OPTIONS = ("labels", "images")


def locate(path: str | None, base: Path | None) -> str | None:
    """A relative path as given when it exists from the working directory, else relative to ``base``; a
    ``../shared/data/...`` path goes under the data root when one is set (``dermvlm.data_root``)."""
    if path is not None and rerooted(path) != path:
        return rerooted(path)
    if path is None or Path(path).is_absolute() or Path(path).exists() or base is None:
        return path
    return str(base / path) if (base / path).exists() else path


def stratified_train_fraction(records: list[Record], fraction: float, seed: str) -> list[Record]:
    """Keep ``fraction`` of each class among the train-split records (at least one per class, seeded); records of
    other splits are kept whole."""
    rng = random.Random(seed)
    by_label: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.split == "train":
            by_label[r.label].append(r)
    keep = set()
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: r.image)
        keep.update(id(r) for r in rng.sample(group, max(1, round(fraction * len(group)))))
    return [r for r in records if r.split != "train" or id(r) in keep]


def no_image_message(skipped: list[tuple[str, str]]) -> str:
    """Why a build has no image at all, with the skipped files' reasons (there is no output to hold a list)."""
    if not skipped:
        return "no image could be used: the sources list none; check the images folder and the labels CSV"
    reasons = Counter(why for _, why in skipped)
    examples = "; ".join(f"{Path(image).name or image}: {why[:100]}" for image, why in skipped[:3])
    return (f"no image could be used: all {len(skipped)} were skipped ("
            + ", ".join(f"{n} {why[:60]}" for why, n in reasons.most_common(3)) + f"), e.g. {examples}")


def exclusions(recipe: RecipeConfig, base: Path | None = None) -> dict[str, str]:
    """The recipe's ``exclude:`` as image key → why (keys: id/stem, file name or path)."""
    entries = recipe.exclude
    if isinstance(entries, str):
        path = Path(locate(entries, base) or entries)
        try:
            data = safe_yaml.load(safe_yaml.read_text(path)) or {}
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise DatasetError(f"exclude: cannot read {path} ({err}); give a list of image ids or the exclude.yaml "
                               "that 'dermvlm data audit' wrote") from None
        items = data.get("exclude") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(e, dict) and e.get("image") for e in items):
            raise DatasetError(f"{path}: expected 'exclude:' with a list of {{image, why}} entries")
        return {str(e["image"]): str(e.get("why") or "listed in " + path.name) for e in items}
    return {str(e): "listed in the recipe" for e in entries}


def _excluded(record: Record, keys: dict[str, str]) -> str | None:
    p = Path(record.image)
    for k in (record.image, p.name, p.stem, str(p.resolve())):
        if k in keys:
            return keys[k]
    return None


def collect_records(recipe: RecipeConfig, kg, overrides: list[dict] | None = None, base: Path | None = None
                    ) -> tuple[list[Record], list[tuple[str, str]], dict[str, str]]:
    """All sources' records (override the recipe's sources with ``overrides`` when given). Relative roots are
    found from the working directory or, failing that, from ``base`` (the recipe's folder)."""
    specs = overrides if overrides else [s.model_dump() for s in recipe.sources]
    records, skipped, licences = [], [], {}
    for spec in specs:
        options = {k: locate(v, base) if k in PATH_OPTIONS else v for k, v in (spec.get("options") or {}).items()}
        result = load_source(spec["name"], kg, root=locate(spec.get("root"), base),
                             label_map=spec.get("label_map") or None,
                             on_unknown_label=spec.get("on_unknown_label", "error"), **options)
        recs = result.records
        if spec.get("splits"):
            recs = [r for r in recs if not r.split or r.split in spec["splits"]]
        if spec.get("limit_per_split"):
            rng = random.Random(f"{recipe.seed}-{spec['name']}-limit")
            by_split: dict[str, list[Record]] = defaultdict(list)
            for r in recs:
                by_split[r.split].append(r)
            recs = [r for s in sorted(by_split) for r in
                    sorted(rng.sample(by_split[s], min(len(by_split[s]), spec["limit_per_split"])),
                           key=lambda r: r.image)]
        if spec.get("train_fraction"):
            if not any(r.split == "train" for r in recs):
                raise DatasetError(f"source {spec['name']}: train_fraction needs official splits (its records have "
                                   "none); split the data first or use limit_per_split")
            recs = stratified_train_fraction(recs, spec["train_fraction"], f"{recipe.seed}-{spec['name']}-fraction")
        records += recs
        skipped += [(path, f"{why} [{spec['name']}]") for path, why in result.skipped]
        licences[spec["name"]] = SOURCES[spec["name"]].licence
    keys = exclusions(recipe, base)
    if keys:
        kept = []
        for r in records:
            why = _excluded(r, keys)
            if why is None:
                kept.append(r)
            else:
                skipped.append((r.image, f"excluded by the recipe: {why}"))
        records = kept
    if not records:
        raise DatasetError("the sources yielded no usable records (see the skipped list)")
    return records, skipped, licences


def load_checked(records: list[Record], recipe: RecipeConfig, skipped: list[tuple[str, str]],
                 advance: Callable[[], None] | None = None) -> tuple[list[Record], list]:
    """The records whose image loads cleanly and their ``CleanImage``s; the others go to ``skipped`` with why."""
    kept, clean = [], []
    for r in records:
        try:
            clean.append(load_image(r.image, recipe.image.max_side, recipe.image.max_pixels))
            kept.append(r)
        except ImageProblem as err:
            skipped.append((r.image, str(err)))
        if advance:
            advance()
    return kept, clean


def build(recipe: RecipeConfig, out: str | Path, overrides: list[dict] | None = None, progress: bool = True,
          base: Path | None = None, splits: SplitTable | None = None) -> BuildResult:
    """Build every kind the recipe enables and write them (atomically) to ``out``, with ``splits.csv``. With
    ``splits`` (a run's split assignment), its images and groups keep the splits it gives them."""
    import datasets
    from datasets import Dataset, DatasetDict

    datasets.disable_progress_bars()
    kg = load_graph()
    records, skipped, licences = collect_records(recipe, kg, overrides, base)
    keep, dup = resolve_conflicts(records, lambda i, r: str(Path(r.image).resolve()), recipe.dedup.on_conflict)
    records = [records[i] for i in keep]
    skipped += dup
    assign_splits(records, recipe.split.val, recipe.split.test, recipe.seed, splits)
    # -- images
    bar = ProgressLine("checking images", len(records), "images", transient=True).start() if progress else None
    try:
        kept, clean = load_checked(records, recipe, skipped, (lambda: bar.update(advance=1)) if bar else None)
    finally:
        if bar:
            bar.stop()
    if not kept:
        raise DatasetError(no_image_message(skipped))
    keep, dup = resolve_conflicts(kept, lambda i, r: clean[i].sha256, recipe.dedup.on_conflict, "image content")
    kept, clean = [kept[i] for i in keep], [clean[i] for i in keep]
    skipped += dup
    # -- duplicates and leakage
    report = find_duplicates([c.sha256 for c in clean], [c.phash for c in clean], recipe.dedup.near_threshold)
    survivors = resolve(kept, report, recipe.dedup.policy)
    keep_ids = {id(r) for r in survivors}
    skipped += report.dropped
    image_of = {id(r): c for r, c in zip(kept, clean, strict=True)}
    records = survivors
    if recipe.dedup.policy == "report":
        check_leakage(records)
    else:
        index = {id(r): i for i, r in enumerate(records)}
        pairs = [(index[id(kept[i])], index[id(kept[j])]) for i, j in report.cross_split(kept)
                 if id(kept[i]) in keep_ids and id(kept[j]) in keep_ids]
        check_leakage(records, pairs)
    # -- kinds
    labels = sorted({r.label for r in records})
    counts = Counter(r.label for r in records if r.split == "train") or Counter(r.label for r in records)
    for lab in labels:
        counts.setdefault(lab, 1)
    scorer = KGScorer(kg)
    kinds_out: dict[str, dict[str, list[dict]]] = {}
    for kind, spec in recipe.kinds.enabled().items():
        ctx = Context(kg, labels, counts, recipe.system_prompt)
        rng = random.Random(f"{recipe.seed}-{kind}")
        rows: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            if r.split not in spec.splits:
                continue
            img = image_of[id(r)]
            for _ in range(spec.per_image):
                for row in BUILDERS[kind](ctx, r, rng, spec):
                    row["images"] = [{"bytes": img.data, "path": None}]
                    if kind == "preference_pair":
                        record_facts = dict(site=r.site, fitzpatrick=r.fitzpatrick, facts=RecordFacts.from_meta(r.meta))
                        row["chosen_score"] = scorer(row["chosen"][0]["content"][0]["text"], r.label, **record_facts)
                        row["rejected_score"] = scorer(row["rejected"][0]["content"][0]["text"], r.label,
                                                       **record_facts)
                    if kind == "eval_item":
                        row["id"] = hashlib.sha256(f"{img.sha256}|{row['type']}|{row['question']}|{len(rows[r.split])}"
                                                   .encode()).hexdigest()[:16]
                    rows[r.split].append(row)
        kinds_out[kind] = rows
    stats = _stats(recipe, records, kinds_out, skipped, report.summary(kept), licences)
    stats["image_size_median"] = median_size([image_of[id(r)].image.size for r in records])
    out = Path(out)
    assignment = split_rows(records)
    try:
        before = SplitTable.of_build(out)
    except DatasetError:  # an unreadable earlier assignment: nothing to compare with
        before = None
    change = split_change(before, _split_settings(out / "recipe.json"), assignment, stats["split"])
    with atomic_dir(out, command="data build") as tmp:
        for kind, rows in kinds_out.items():
            feats = _features(kind)
            dd = DatasetDict({s: Dataset.from_dict({k: [row[k] for row in rows[s]] for k in feats}, features=feats)
                              for s in ("train", "val", "test") if rows.get(s)})
            dd.save_to_disk(str(tmp / kind))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "reason"])
        w.writerows(sorted(skipped))
        (tmp / "skipped.csv").write_text(buf.getvalue())
        (tmp / "README.md").write_text(_card(recipe, stats))
        (tmp / "recipe.json").write_text(json.dumps(recipe.model_dump(), indent=2, sort_keys=True) + "\n")
        (tmp / SPLITS_FILE).write_text(splits_csv(assignment))
    return BuildResult(out=out, stats=stats, skipped=skipped, split_change=change)


def _split_settings(recipe_json: Path) -> dict[str, Any] | None:
    """The seed and fractions of the build that ``recipe_json`` describes (None when there is none)."""
    try:
        old = json.loads(recipe_json.read_text())
        return {"seed": old["seed"], "val": old["split"]["val"], "test": old["split"]["test"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def median_size(sizes: list[tuple[int, int]]) -> list[int]:
    """The stored images' median (width, height): the typical image a run's tokens per image are counted for."""
    import statistics

    return [int(statistics.median(w for w, _ in sizes)), int(statistics.median(h for _, h in sizes))]


def _stats(recipe, records, kinds_out, skipped, dup, licences) -> dict[str, Any]:
    by_split: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_split[r.split][r.label] += 1
    kinds = {}
    for kind, rows in kinds_out.items():
        kinds[kind] = {s: len(v) for s, v in sorted(rows.items())}
        if kind == "preference_pair":
            per: dict[str, list[float]] = defaultdict(list)
            for v in rows.values():
                for row in v:
                    per[row["perturbation"]].append(row["chosen_score"] - row["rejected_score"])
            kinds[kind + "_margin"] = {k: round(sum(m) / len(m), 4) for k, m in sorted(per.items())}
        if kind in ("mcq", "eval_item", "grpo_prompt"):
            letters = Counter()
            for v in rows.values():
                for row in v:
                    if kind == "mcq":
                        letters[row["messages"][-1]["content"][0]["text"].split("<answer>")[1][0]] += 1
                    elif row.get("options") and len(row.get("answer", "")) == 1:
                        letters[row["answer"]] += 1
            if letters:
                kinds[kind + "_answer_letters"] = dict(sorted(letters.items()))
    reasons = Counter(re.split(r" \(| \[|: ", why)[0] for _, why in skipped)
    return {
        "recipe": recipe.name, "recipe_hash": recipe_hash(recipe), "seed": recipe.seed,
        "records": len(records), "records_by_split": {s: sum(c.values()) for s, c in sorted(by_split.items())},
        "labels_by_split": {s: dict(sorted(c.items())) for s, c in sorted(by_split.items())},
        "kinds": kinds, "skipped": len(skipped), "skipped_by_reason": dict(reasons.most_common()),
        "duplicates": dup, "sources": licences,
        "fitzpatrick": dict(sorted(Counter(str(r.fitzpatrick) for r in records if r.fitzpatrick).items())),
        "split": {"seed": recipe.seed, "val": recipe.split.val, "test": recipe.split.test},
        "warnings": small_data_warnings(records, recipe.split.val, recipe.split.test),
    }


def _card(recipe: RecipeConfig, stats: dict[str, Any]) -> str:
    """The dataset card (``huggingface_hub.DatasetCard``: YAML metadata the Hub validates, then the counts)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(pretty_name=f"dermvlm {recipe.name}", tags=["dermatology", "vision-language", "dermvlm"],
                           task_categories=["visual-question-answering", "image-classification"],
                           license="other", license_name="per-source")  # each source's licence: listed below
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {recipe.name}", "", recipe.description or "Built by `dermvlm data build`.", "",
        f"- recipe hash: `{stats['recipe_hash']}`, seed {stats['seed']}",
        f"- records: {stats['records']} ({', '.join(f'{k} {v}' for k, v in stats['records_by_split'].items())})",
        f"- skipped files: {stats['skipped']} ({', '.join(f'{k}: {v}' for k, v in stats['skipped_by_reason'].items())})"
        if stats["skipped"] else "- skipped files: 0",
        f"- duplicates: {stats['duplicates']}", "", "## Kinds", "", "| kind | " + " | ".join(("train", "val", "test"))
        + " |", "|---|---|---|---|",
    ]
    for kind, c in stats["kinds"].items():
        if isinstance(c, dict) and set(c) <= {"train", "val", "test"}:
            lines.append(f"| {kind} | " + " | ".join(str(c.get(s, 0)) for s in ("train", "val", "test")) + " |")
    lines += ["", "## Label distribution", "", "| label | " + " | ".join(stats["labels_by_split"]) + " |",
              "|---|" + "---|" * len(stats["labels_by_split"])]
    labels = sorted({lab for c in stats["labels_by_split"].values() for lab in c})
    for lab in labels:
        lines.append(f"| {lab} | " + " | ".join(str(c.get(lab, 0)) for c in stats["labels_by_split"].values()) + " |")
    if stats["warnings"]:
        lines += ["", "## Small data", ""] + [f"- {w}" for w in stats["warnings"]]
    lines += ["", "## Sources and licences", ""] + [f"- {k}: {v}" for k, v in stats["sources"].items()]
    lines += ["", "Research use only: outputs of models trained on this data are not medical diagnoses.", ""]
    return str(DatasetCard("\n".join(lines)))
