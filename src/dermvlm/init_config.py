"""``dermvlm init --images DIR --labels CSV``: a working run config for your own labeled images.

It reads the CSV and the folder and finds what it can: the column naming the image files (the one whose values
match files in the folder), the label column (by name, else the column whose values the knowledge graph knows),
a patient/lesion column (``group_detection``), body-site and Fitzpatrick columns by name. Labels the graph does
not know go into ``label_map`` with the graph's closest name, marked as guesses. It says which columns it guessed,
and writes a nano-model run (every stage, minutes on a CPU) whose paths are relative to the config file.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dermvlm.datasets.adapters.common import (
    IMAGE_SUFFIXES,
    DatasetError,
    folded_index,
    index_images,
    lookup_image,
    read_csv,
)
from dermvlm.datasets.group_detection import column_named, find_group_column

LABEL_NAMES = ("label", "labels", "diagnosis", "diagnostic", "dx", "class", "disease", "condition", "category",
               "target", "lesion_type")
SITE_NAMES = ("site", "body_site", "body_region", "region", "location", "localization", "anatom_site_general",
              "anatomic_site")
FITZPATRICK_NAMES = ("fitzpatrick", "fitspatrick", "fitzpatrick_scale", "fitzpatrick_skin_type", "skin_type")


@dataclass
class Detected:
    """The columns found, how each was found, and what the labels resolve to."""

    image_col: str
    label_col: str
    group_col: str | None = None
    site_col: str | None = None
    fitzpatrick_col: str | None = None
    label_map: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def detect_columns(images: Path, labels: Path, image_col: str | None = None, label_col: str | None = None,
                   group_col: str | None = None) -> Detected:
    """Find the columns of ``labels`` (those given are taken as given); raise ``DatasetError`` when the image or
    label column cannot be found."""
    from dermvlm.knowledge import load_graph

    rows = read_csv(labels, required=[c for c in (image_col, label_col, group_col) if c])  # a typo: named
    columns = list(rows[0])
    notes = []
    files = index_images(images) if images.is_dir() else {}
    if not files:
        raise DatasetError(f"{images}: no image files there ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
    folded = folded_index(files)

    def matches(col: str) -> int:
        return sum(1 for r in rows if r[col] and lookup_image(files, r[col], folded) is not None)

    if image_col is None:
        counts = {c: matches(c) for c in columns}
        image_col = max(columns, key=lambda c: (counts[c], c in ("image", "file", "filename", "img_id")))
        if not counts[image_col]:
            raise DatasetError(f"{labels}: no column names files of {images}; give --image-col")
        notes.append(f"image column: {image_col} (guessed: {counts[image_col]} of {len(rows)} rows name a file "
                     f"in {images})")
    else:
        notes.append(f"image column: {image_col} (given; {matches(image_col)} of {len(rows)} rows name a file)")
    unread = Counter(Path(v).suffix.lower() for r in rows if (v := r[image_col].replace("\\", "/"))
                     and Path(v).suffix.lower() not in ("", *IMAGE_SUFFIXES) and (images / v).is_file())
    if unread:
        notes.append(f"{sum(unread.values())} row(s) name files of a format dermvlm does not read "
                     f"({', '.join(f'{s} {n}' for s, n in unread.most_common())}): convert them to JPEG or PNG, "
                     f"or the build skips them")
    kg = load_graph()

    def known(col: str) -> float:
        values = {r[col] for r in rows if r[col]}
        return sum(_resolves(kg, v) for v in values) / max(1, len(values))

    if label_col is None:
        rest = [c for c in columns if c != image_col]
        label_col = column_named(rest, LABEL_NAMES)
        how = "by its name"
        if label_col is None:
            scores = {c: known(c) for c in rest if 1 < len({r[c] for r in rows}) <= max(2, len(rows) // 2)}
            label_col = max(scores, key=scores.get) if scores and max(scores.values()) >= 0.5 else None
            how = "its values are diagnoses the knowledge graph knows"
        if label_col is None:
            raise DatasetError(f"{labels}: no label column found (columns: {', '.join(columns)}); give --label-col")
        notes.append(f"label column: {label_col} (guessed: {how})")
    else:
        notes.append(f"label column: {label_col} (given)")
    found = Detected(image_col=image_col, label_col=label_col, notes=notes)
    values = Counter(r[label_col] for r in rows if r[label_col])
    unknown = sorted(v for v in values if not _resolves(kg, v))
    for v in unknown:
        close = [] if placeholder(v) else kg.suggest(v, 1, cutoff=GUESS_CUTOFF)
        if close:
            found.label_map[v] = close[0]
    notes.append(f"labels: {len(values)} ({', '.join(f'{k} {n}' for k, n in values.most_common(8))}"
                 + (", ..." if len(values) > 8 else "") + "); "
                 + (f"{len(unknown)} the knowledge graph does not know: "
                    + ", ".join(f"{v} → {found.label_map.get(v, '?')}" for v in unknown)
                    + " (label_map guesses: check them)"
                    + ("; map each '?' in data.label_map, or set data.on_unknown_label: skip"
                       if set(unknown) - set(found.label_map) else "")
                    if unknown else "every one known to the knowledge graph"))
    if group_col is None:
        group_col = find_group_column([c for c in columns if c not in (image_col, label_col)])
        notes.append(f"group column: {group_col} (guessed: a patient/lesion column; splits never cut one)" if group_col
                     else "group column: none found: each image is its own group (set data.group_col if several "
                          "images show one patient or lesion)")
    else:
        notes.append(f"group column: {group_col} (given)")
    found.group_col = group_col
    found.site_col = column_named(columns, SITE_NAMES)
    found.fitzpatrick_col = column_named(columns, FITZPATRICK_NAMES)
    for what, col in (("body-site", found.site_col), ("Fitzpatrick", found.fitzpatrick_col)):
        if col:
            notes.append(f"{what} column: {col} (guessed by its name)")
    return found


# A label is guessed only from a close spelling ("melanom" → melanoma); a looser match named other diseases
# ("NA" → herpes zoster, "Nevi" → pediculosis), worse than no guess, which config check then stops on.
GUESS_CUTOFF = 0.8
PLACEHOLDERS = {"na", "n/a", "nan", "none", "null", "unknown", "unk", "other", "others", "missing", "?", "-", "--"}


def placeholder(value: str) -> bool:
    """A label that names no diagnosis: a placeholder ("NA", "unknown", "other") or a numeric code."""
    v = value.strip().lower()
    return v in PLACEHOLDERS or v.replace(".", "", 1).isdigit()


def _resolves(kg, value: str) -> bool:
    from dermvlm.knowledge import UnknownLabelError

    try:
        kg.resolve(value)
        return True
    except UnknownLabelError:
        return False


STAGES = """\
stages:                    # the nano model's CPU run: every stage, a few minutes (configs/nano-cpu.yaml)
  - name: vision
    kind: vision
    contrastive: true
    trl: {max_steps: 40, per_device_train_batch_size: 8, learning_rate: 2.0e-3, warmup_steps: 0, save_steps: 20}
  - name: pretrain
    kind: sft
    use_lora: false
    freeze: [vision]
    data: [reasoning_trace, mcq, open_diagnosis, yes_no, attribute, conversation]
    trl: {max_steps: 250, learning_rate: 3.0e-3, per_device_train_batch_size: 4}
  - name: grpo
    kind: grpo
    use_lora: true
    rewards: {format: 0.2, partial_credit: 1.0, reasoning_consistency: 0.3, overlong: 0.2}
    plus: {clip_higher: 0.28, iterations: 2, token_level_loss: true, zero_variance_filter: true,
           max_resample_rounds: 1, ref_sync: true, kl_beta: 0.01, ref_sync_steps: 4, ref_sync_alpha: 0.2,
           curriculum: true, hints: true, hint_fade_until: 0.5, class_balanced: true, balance: 0.5,
           rarity_weight: true}
    trl: {max_steps: 8, num_generations: 4, per_device_train_batch_size: 8, max_completion_length: 160,
          learning_rate: 1.0e-4}
  - name: sft
    kind: sft
    use_lora: true
    data: [conversation, reasoning_trace]
    trl: {max_steps: 30, learning_rate: 1.0e-3, per_device_train_batch_size: 4}
  - name: dpo
    kind: dpo
    use_lora: true
    pairs_from: recipe
    trl: {max_steps: 15, learning_rate: 5.0e-5, per_device_train_batch_size: 4, beta: 0.1}
serve: {host: 127.0.0.1, port: 0, dtype: float32, max_model_len: 1024, kv_cache_memory: 128M}
# evaluate: left out = the held-out test split of your data (evaluate: [test]); add suite files to evaluate more
"""


def run_name(images: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", images.resolve().name).strip("-_").lower()
    return name if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name or "") else "my-images"


def config_text(images: Path, labels: Path, out: Path, found: Detected, family: str) -> str:
    """The run config's YAML, paths relative to ``out``'s folder."""
    folder = out.resolve().parent

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), folder)

    data = {"images": rel(images), "labels": rel(labels), "image_col": found.image_col,
            "label_col": found.label_col}
    for key in ("group_col", "site_col", "fitzpatrick_col"):
        if getattr(found, key):
            data[key] = getattr(found, key)
    if found.label_map:
        data["label_map"] = found.label_map
    head = (f"# Written by `dermvlm init` for {rel(labels)}; paths are relative to this file's folder.\n"
            "# Check it: dermvlm config check THIS.yaml; preview: dermvlm pipeline THIS.yaml --dry-run;\n"
            "# run: dermvlm pipeline THIS.yaml (trains, then evaluates the held-out test split).\n"
            "# A real model: take model: (name_or_path, dtype, 4-bit, LoRA), serve: and the stages of\n"
            "# configs/qwen2.5-vl-3b-qlora.yaml or another GPU config (drop model.nano).\n")
    body = {"name": run_name(images), "seed": 0, "output_dir": "runs",
            "model": {"nano": {"preset": "nano", "seed": 0, "family": family}, "dtype": "float32",
                      "quantization": {"load_in_4bit": False}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "data": data}
    text = head.replace("THIS.yaml", out.name) + yaml.safe_dump(body, sort_keys=False, width=110)
    if found.label_map:
        text = text.replace("  label_map:\n", "  label_map:   # guessed from the closest names: check them\n")
    return text + STAGES


def write_config(images: Path, labels: Path, out: Path, family: str = "qwen2_5_vl", force: bool = False,
                 image_col: str | None = None, label_col: str | None = None, group_col: str | None = None
                 ) -> tuple[Path, Detected]:
    """Detect the columns and write the run config to ``out`` (an existing file only with ``force``)."""
    from dermvlm.io import atomic_write_text, check_output_file
    from dermvlm.models.families import FAMILIES

    if family not in FAMILIES:
        raise DatasetError(f"--family: unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    check_output_file(out, force, example=f"{run_name(images)}.yaml", inputs={"your labels CSV": labels})
    found = detect_columns(images, labels, image_col, label_col, group_col)
    return atomic_write_text(out, config_text(images, labels, out, found, family)), found
