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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dermvlm.echo import shown

LETTERS = "ABCDEFGHIJ"
MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."


class BenchmarkFileError(ValueError):
    """A benchmark file or row that cannot be read (the message names file, row and field)."""


def read_benchmark(path: str | Path, fmt: str | None = None, limit: int | None = None,
                   allow_outside_images: bool = False) -> list[dict[str, Any]]:
    """Items of a TSV / JSONL / CSV benchmark file (``fmt``: ``tsv``, ``jsonl``, ``csv``; default: by extension).

    Rows are read one at a time and only the first ``limit`` are decoded, so ``--limit`` costs what it reads
    however large the file is. A path in ``image_path`` / ``image`` must stay in the file's folder unless
    ``allow_outside_images`` (the endpoint would be sent any file this machine can read)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark file not found")
    fmt = fmt or benchmark_format(path)
    if fmt not in ("tsv", "jsonl", "csv"):
        raise BenchmarkFileError(f"{path}: unknown benchmark format; name it .tsv, .jsonl or .csv, or set format:")
    rows = _jsonl_rows(path) if fmt == "jsonl" else _table_rows(path, "\t" if fmt == "tsv" else ",")
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, row in rows:
        if limit and len(items) >= limit:
            break
        item = _item(row, n, path, allow_outside_images)
        if item["id"] in seen:
            raise BenchmarkFileError(f"{path}: row {n}: id {item['id']!r} repeats row {seen[item['id']]}; ids must be "
                                     "unique")
        seen[item["id"]] = n
        items.append(item)
    if not items:
        raise BenchmarkFileError(f"{path}: no rows")
    return items


def benchmark_format(path: Path) -> str | None:
    return {".tsv": "tsv", ".jsonl": "jsonl", ".csv": "csv"}.get(path.suffix.lower())


def file_digest(path: str | Path) -> dict[str, Any]:
    """sha256 and size of a benchmark file, read in chunks (the cache key of its items, whatever ``--limit``)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"file_sha256": h.hexdigest(), "bytes": Path(path).stat().st_size}


def _not_utf8(path: Path, line: int, err: UnicodeDecodeError) -> BenchmarkFileError:
    return BenchmarkFileError(f"{path}: line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); re-save "
                              "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _table_rows(path: Path, sep: str) -> Iterator[tuple[int, dict[str, str]]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    reader = csv.DictReader(_utf8_lines(path), delimiter=sep)
    fields = reader.fieldnames
    if not fields:
        raise BenchmarkFileError(f"{path}: empty file (no header)")
    missing = [c for c in ("question", "answer") if c not in fields]
    if missing or not ({"image", "image_path"} & set(fields)):
        need = missing + ([] if {"image", "image_path"} & set(fields) else ["image (or image_path)"])
        raise BenchmarkFileError(f"{path}: missing column(s) {', '.join(need)}; found: "
                                 f"{', '.join(shown(f, 40) if f != f.strip() else f for f in fields)}")
    while True:
        start = reader.line_num + 1
        row = next(reader, None)
        if row is None:
            return
        yield start, {k: (v or "") for k, v in row.items() if k is not None}


def _utf8_lines(path: Path) -> Iterator[str]:
    """The file's lines, decoded one at a time: a byte that is not UTF-8 is an error naming its line."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, n, err) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path}: line {n}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise BenchmarkFileError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
        yield n, row


def _image_bytes(value: Any, row: dict[str, Any], n: int, path: Path, allow_outside: bool) -> bytes:
    """The row's image as bytes: ``image_path`` or ``image`` as a path (relative to the file), a data URL or base64;
    checked to be a readable image."""
    from PIL import Image

    where = f"{path}: row {n}"
    field = "image_path" if row.get("image_path") else "image"
    source = row.get("image_path") or value
    if not isinstance(source, str) or not source.strip():
        raise BenchmarkFileError(f"{where}: field image: empty; give base64, a data: URL or a path")
    source = source.strip()
    candidate = (path.parent / source) if not source.startswith("data:") and len(source) < 1024 else None
    if candidate is not None and candidate.is_file():
        folder = path.parent.resolve()
        if not allow_outside and not candidate.resolve().is_relative_to(folder):
            raise BenchmarkFileError(f"{where}, field {field}: {shown(source)} points outside the benchmark file's "
                                     f"folder {folder}; move the image in, or pass --allow-outside-images")
        data = candidate.read_bytes()
    else:
        encoded = source.split(",", 1)[1] if source.startswith("data:") else source
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            hint = f"no file {shown(str(candidate))} and " if candidate is not None else ""
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


def _item(row: dict[str, Any], n: int, path: Path, allow_outside: bool = False) -> dict[str, Any]:
    question = str(row.get("question") or "").strip()
    if not question:
        raise BenchmarkFileError(f"{path}: row {n}: field question: empty")
    answer = str(row.get("answer") if row.get("answer") is not None else "").strip()
    if not answer:
        raise BenchmarkFileError(f"{path}: row {n}: field answer: empty")
    image = _image_bytes(row.get("image"), row, n, path, allow_outside)
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
                raise BenchmarkFileError(f"{path}: row {n}: field answer: {shown(answer)} is neither an option letter "
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
