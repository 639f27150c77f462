"""What every adapter shares: raw rows → canonical records (labels resolved by the graph), CSV reading, sites."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermvlm.datasets.records import Record
from dermvlm.knowledge import KnowledgeGraph, UnknownLabelError

SPLITS = ("train", "val", "test")
# ISIC's general anatomic sites (CSV exports) → graph site ids.
ISIC_GENERAL_SITES = {
    "head/neck": "head_neck", "anterior torso": "chest", "posterior torso": "back", "lateral torso": "trunk",
    "torso": "trunk", "upper extremity": "upper_limb", "lower extremity": "lower_limb", "palms/soles": "palm",
    "oral/genital": "anogenital", "abdomen": "abdomen", "chest": "chest", "back": "back", "face": "face",
    "scalp": "scalp", "neck": "neck", "trunk": "trunk", "acral": "palm", "genital": "anogenital",
    "foot": "foot", "hand": "hand", "ear": "ear",
}

# What an images folder is indexed by (``index_images``) and what a CSV header cell may not be (HEIC/HEIF are read
# through ``datasets.photo_formats``).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".heic", ".heif")


class DatasetError(ValueError):
    """Input that cannot become a dataset (missing columns, unknown labels, bad CSV); the message says what."""


@dataclass
class RawRow:
    """One image as an adapter reads it, before label resolution."""

    image: str
    source_label: str
    split: str | None = None
    group_id: str | None = None
    fitzpatrick: int | None = None
    site: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    label_dataset: str | None = None  # overrides the source's label table for this row


@dataclass
class AdapterResult:
    """Canonical records plus every file that was skipped, with why."""

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""


def read_csv(path: str | Path, required: Iterable[str] = (), encoding: str = "utf-8") -> list[dict[str, str]]:
    """Rows of a CSV with clear errors for a missing, empty, non-UTF-8 or column-lacking file."""
    return [row for _, row in read_csv_lines(path, required, encoding)]


def read_csv_lines(path: str | Path, required: Iterable[str] = (), encoding: str = "utf-8"
                   ) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` for every row of a CSV (``line``: its line in the file), with clear errors for a missing,
    empty or non-UTF-8 file, missing columns (names shown exactly, spaces included) and a row that runs over
    several lines (an unclosed quote, or a line break inside a value: neither is a label or a file name). Commas,
    or semicolons or tabs (``delimiter``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV not found: {path}")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: not valid {encoding} (byte 0x{err.object[err.start]:02x} on line {line}); "
            "re-save it as UTF-8 or set the source's encoding (e.g. encoding: latin-1)") from None
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise DatasetError(f"{path}: the CSV is empty")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter(text))
    columns = _one_line_row(reader, next(reader, []), 0, path)
    named = [c for c in columns if Path(c.strip()).suffix.lower() in IMAGE_SUFFIXES]
    if named:
        raise DatasetError(f"{path}: the first line names a file ({named[0]!r}), so it is a row, not the column names: "
                           "add a header line first (e.g. image,label)")
    missing = [c for c in required if c not in columns]
    if missing:
        spaced = [c for c in columns if c != c.strip() and c.strip() in missing]
        hint = f" (the name {spaced[0]!r} has spaces around it: remove them)" if spaced else ""
        shown = ", ".join(c if c == c.strip() else repr(c) for c in columns)
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; the CSV has: {shown}{hint}")
    rows, last = [], reader.line_num
    for row in reader:
        start, last = last + 1, reader.line_num
        row = _one_line_row(reader, row, start, path)
        if any(cell.strip() for cell in row):
            rows.append((start, {c: (row[i] if i < len(row) else "").strip() for i, c in enumerate(columns)}))
    if not rows:
        raise DatasetError(f"{path}: the CSV has a header but no rows")
    return rows


def delimiter(text: str) -> str:
    """The CSV's delimiter: a comma, or the semicolon or tab of a header line without one (Excel in locales whose
    decimal mark is a comma, and tab-separated exports)."""
    header = text.split("\n", 1)[0]
    return next((d for d in (";", "\t") if "," not in header and d in header), ",")


def _one_line_row(reader, row: list[str], start: int, path: Path) -> list[str]:
    """``row``, refused when the reader had to read it from several lines."""
    first = start or 1
    if reader.line_num > first:
        raise DatasetError(f"{path}: lines {first}-{reader.line_num} are read as one row: a quote (\") opened on line "
                           f"{first} closes only on line {reader.line_num}, or a value holds a line break; fix the "
                           "quoting on line " + str(first))
    return row


def parse_fitzpatrick(value: Any) -> int | None:
    """1-6 from '3', '3.0', 'III', 'IV'; None for blanks, -1 and anything else."""
    if value is None:
        return None
    s = str(value).strip().upper()
    roman = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}
    if s in roman:
        return roman[s]
    try:
        n = int(float(s))
    except ValueError:
        return None
    return n if 1 <= n <= 6 else None


def fitzpatrick_group(n: int | None) -> str | None:
    """The three bands reports stratify by: I-II, III-IV, V-VI."""
    return None if n is None else ("I-II", "III-IV", "V-VI")[(n - 1) // 2]


def site_id(kg: KnowledgeGraph, text: str | None) -> str | None:
    """A graph site id for a dataset's body-site string (None when it names no known site)."""
    if not text:
        return None
    key = text.strip().lower()
    if key in ISIC_GENERAL_SITES:
        return ISIC_GENERAL_SITES[key]
    for phrase in (key, key.replace("_", " "), key.split("/")[0]):
        hits = [n for n, k in kg.lexicon.lookup(phrase) if k == "site"]
        if hits:
            return hits[0].split(":", 1)[1]
    return None


def finalize(rows: list[RawRow], kg: KnowledgeGraph, dataset: str, label_dataset: str | None,
             label_map: dict[str, str] | None = None, on_unknown_label: str = "error") -> tuple[list[Record], list]:
    """Resolve labels to graph nodes; unknown labels fail together (each with its closest matches) or are
    skipped when ``on_unknown_label: skip``."""
    resolved: dict[tuple[str, str | None], str] = {}
    unknown: dict[str, str] = {}
    counts = Counter((r.source_label, r.label_dataset or label_dataset) for r in rows)
    for label, table in counts:
        target = (label_map or {}).get(label, label)
        try:
            resolved[(label, table)] = kg.resolve(target, table) if table else kg.resolve(target)
        except UnknownLabelError as err:
            unknown[label] = str(err)
    skipped = []
    if unknown and on_unknown_label == "error":
        n = Counter(r.source_label for r in rows)
        lines = [f"  {lab!r} ({n[lab]} images): {msg}" for lab, msg in sorted(unknown.items())]
        raise DatasetError(f"{dataset}: {len(unknown)} label(s) the knowledge graph does not know:\n"
                           + "\n".join(lines) + "\nFix the labels, map them with label_map, or set "
                           "on_unknown_label: skip")
    records = []
    for r in rows:
        if r.source_label in unknown:
            skipped.append((r.image, f"unknown label {r.source_label!r}"))
            continue
        records.append(Record(
            image=r.image, label=resolved[(r.source_label, r.label_dataset or label_dataset)],
            source_label=r.source_label, dataset=dataset,
            split=r.split or "", group_id=r.group_id or Path(r.image).stem, fitzpatrick=r.fitzpatrick,
            site=r.site, meta=r.meta))
    return records, skipped


def index_images(root: Path, exts: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Image files under ``root`` by file stem (and by name), for CSVs that name images without a folder."""
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in exts and p.is_file():
            out.setdefault(p.stem, p)
            out.setdefault(p.name, p)
    return out


def folded_index(found: dict[str, Path]) -> dict[str, set[Path]]:
    """``found`` (``index_images``) by lower-cased key, for ``lookup_image``."""
    out: dict[str, set[Path]] = {}
    for key, path in found.items():
        out.setdefault(key.lower(), set()).add(path)
    return out


def lookup_image(found: dict[str, Path], name: str, folded: dict[str, set[Path]]) -> Path | None:
    """The image of ``found`` (``index_images``) a CSV cell names: by name or stem, also with Windows separators
    (``SCC\\x.png``) and, through ``folded`` (``folded_index``) when only one file matches that way, ignoring case
    (a CSV written on macOS or Windows, whose file systems ignore case, for files on one that does not)."""
    for key in dict.fromkeys((name, name.replace("\\", "/"))):
        hit = found.get(key) or found.get(Path(key).name) or found.get(Path(key).stem)
        if hit is not None:
            return hit
    key = Path(name.replace("\\", "/")).name.lower()
    hits = folded.get(key) or folded.get(key.rsplit(".", 1)[0]) or set()
    return next(iter(hits)) if len(hits) == 1 else None


def rows_with_images(rows: list[dict[str, str]], found: dict[str, Path], key: str
                     ) -> tuple[list[tuple[dict[str, str], Path]], list[tuple[str, str]]]:
    """Pair each CSV row with its image file (looked up by ``row[key]``); rows without one are skipped, with why."""
    paired, skipped = [], []
    for r in rows:
        path = found.get(r[key])
        if path is None:
            skipped.append((r[key], "image file not found"))
        else:
            paired.append((r, path))
    return paired, skipped
