"""Standard VQA benchmark files as suite items: a VLMEvalKit-style TSV (``index``, ``image`` as base64 or
``image_path``, ``question``, ``A``..``J`` options, ``answer``, optional ``hint``, ``category``) and a generic JSONL or
CSV (``image`` as a path relative to the file, a ``data:`` URL or base64; ``question``; optional ``options`` (a list,
or ``A``..``J`` columns); ``answer``; optional ``id``, ``category``). Closed questions (with options) become ``mcq``
items scored as the project's own; open questions become ``open_text`` items scored with text metrics.

A row that cannot be used is an error naming the file, the row and the field; nothing is half-read.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJ"
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."


class BenchmarkFileError(ValueError):
    """A benchmark file or row that cannot be read (the message names file, row and field)."""


def read_benchmark(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Items of a TSV / JSONL / CSV benchmark file (``fmt``: ``tsv``, ``jsonl``, ``csv``; default: by extension)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark file not found")
    fmt = fmt or {".tsv": "tsv", ".jsonl": "jsonl", ".csv": "csv"}.get(path.suffix.lower())
    if fmt not in ("tsv", "jsonl", "csv"):
        raise BenchmarkFileError(f"{path}: unknown benchmark format; name it .tsv, .jsonl or .csv, or set format:")
    rows = _jsonl_rows(path) if fmt == "jsonl" else _table_rows(path, "\t" if fmt == "tsv" else ",")
    if not rows:
        raise BenchmarkFileError(f"{path}: no rows")
    items = [_item(row, n, path) for n, row in rows]
    seen: dict[str, int] = {}
    for (n, _), item in zip(rows, items, strict=True):
        if item["id"] in seen:
            raise BenchmarkFileError(f"{path}: row {n}: id {item['id']!r} repeats row {seen[item['id']]}; ids must be "
                                     "unique")
        seen[item["id"]] = n
    return items


def _table_rows(path: Path, sep: str) -> list[tuple[int, dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=sep)
        if not reader.fieldnames:
            raise BenchmarkFileError(f"{path}: empty file (no header)")
        missing = [c for c in ("question", "answer") if c not in reader.fieldnames]
        if missing or not ({"image", "image_path"} & set(reader.fieldnames)):
            need = missing + ([] if {"image", "image_path"} & set(reader.fieldnames) else ["image (or image_path)"])
            raise BenchmarkFileError(f"{path}: missing column(s) {', '.join(need)}; found: "
                                     f"{', '.join(reader.fieldnames)}")
        return [(i + 2, {k: (v or "") for k, v in row.items() if k is not None}) for i, row in enumerate(reader)]


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path}: line {n}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    return rows


def _image_bytes(value: Any, row: dict[str, Any], n: int, path: Path) -> bytes:
    """The row's image as bytes: ``image_path`` or ``image`` as a path (relative to the file), a data URL or base64;
    checked to be a readable image."""
    from PIL import Image

    where = f"{path}: row {n}"
    source = row.get("image_path") or value
    if not isinstance(source, str) or not source.strip():
        raise BenchmarkFileError(f"{where}: field image: empty; give base64, a data: URL or a path")
    source = source.strip()
    candidate = (path.parent / source) if not source.startswith("data:") and len(source) < 1024 else None
    if candidate is not None and candidate.is_file():
        data = candidate.read_bytes()
    else:
        encoded = source.split(",", 1)[1] if source.startswith("data:") else source
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            hint = f"no file {candidate} and " if candidate is not None else ""
            raise BenchmarkFileError(f"{where}: field image: {hint}not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as err:
        raise BenchmarkFileError(f"{where}: field image: not a readable image ({type(err).__name__})") from None
    return data


def _options(row: dict[str, Any], n: int, path: Path) -> list[str]:
    options = row.get("options")
    if options is None or options == "":
        options = [row[c] for c in LETTERS if str(row.get(c, "")).strip() and str(row.get(c)).lower() != "nan"]
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise BenchmarkFileError(f"{path}: row {n}: field options: expected a JSON list") from None
    if not isinstance(options, list) or len(options) > len(LETTERS):
        raise BenchmarkFileError(f"{path}: row {n}: field options: expected a list of at most {len(LETTERS)}")
    return [str(o).strip() for o in options]


def _item(row: dict[str, Any], n: int, path: Path) -> dict[str, Any]:
    question = str(row.get("question") or "").strip()
    if not question:
        raise BenchmarkFileError(f"{path}: row {n}: field question: empty")
    answer = str(row.get("answer") if row.get("answer") is not None else "").strip()
    if not answer:
        raise BenchmarkFileError(f"{path}: row {n}: field answer: empty")
    image = _image_bytes(row.get("image"), row, n, path)
    options = _options(row, n, path)
    hint = str(row.get("hint") or "").strip()
    hint = "" if hint.lower() == "nan" else hint
    ident = str(row.get("id") if row.get("id") not in (None, "") else row.get("index", "")).strip()
    ident = ident or hashlib.sha256(image + question.encode()).hexdigest()[:16]
    base = {"id": ident, "image": image, "category": str(row.get("category") or ""), "dataset": path.name,
            "split": "all", "group_id": ident, "fitzpatrick": 0, "fitzpatrick_group": "", "site": "",
            "malignancy": "", "source_label": answer, "skin_tone_ita": None, "tone_group": "", "artefacts": None}
    if options:
        letter = answer.upper().rstrip(".)") if answer.upper().rstrip(".)") in LETTERS[: len(options)] else None
        if letter is None:
            matches = [i for i, o in enumerate(options) if o.lower() == answer.lower()]
            if len(matches) != 1:
                raise BenchmarkFileError(f"{path}: row {n}: field answer: {answer!r} is neither an option letter "
                                         f"(A-{LETTERS[len(options) - 1]}) nor exactly one option's text")
            letter = LETTERS[matches[0]]
        text = "\n".join(x for x in (f"Hint: {hint}" if hint else "", question) if x)
        text += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)) + f"\n{MCQ_INSTRUCTION}"
        gold = options[LETTERS.index(letter)]
        return base | {"question": text, "options": options, "answer": letter, "type": "mcq", "label": gold,
                       "label_name": gold}
    text = "\n".join(x for x in (f"Hint: {hint}" if hint else "", question) if x)
    return base | {"question": text, "options": [], "answer": answer, "type": "open_text", "label": answer,
                   "label_name": answer}
