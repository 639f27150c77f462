"""One split, fixed once: a record's split is a pure function of its group, the seed and the fractions.

The group is the record's patient or lesion. A record without one (its group is its own image's name) is grouped
by the sha256 of its image file, so a renamed copy, or the same file listed twice, lands in the same split. Each
group draws a number in [0, 1) from ``sha256(seed:group)`` and goes to ``test`` below the test fraction, to
``val`` below test + val, else to ``train``. Nothing else enters the draw, so adding or excluding images never
moves another image, and changing the seed or the fractions is a new split. Label proportions hold in expectation
(every group draws alone), not exactly; the build says when a class misses val or test (``small_data``).

The build writes the assignment as ``splits.csv`` (id, group, split, hash); the pipeline, suites evaluated for a
run, ``eval --run`` and the audit read it back (``SplitTable``) instead of deriving a split again.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.records import Record

SPLITS_FILE = "splits.csv"
COLUMNS = ("id", "group", "split", "hash")
_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str | None:
    """The first 16 hex digits of the sha256 of the file's bytes (``None`` for a file that cannot be read);
    remembered per path, size and modification time."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _hashes:
            digest = hashlib.sha256()
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            _hashes[key] = digest.hexdigest()[:16]
        return _hashes[key]
    except OSError:
        return None


def image_id(record: Record) -> str:
    """The id a person uses for an image: its file name without the extension (as ``exclude:`` and the audit)."""
    return Path(record.image).stem


def group_key(record: Record) -> str:
    """What the record's split is a function of: its patient or lesion, else ``image:<file sha256>``."""
    if record.group_id and record.group_id != image_id(record):
        return record.group_id
    digest = file_sha256(record.image)
    return f"image:{digest}" if digest else record.group_id


def draw(key: str, seed: int) -> float:
    """The group's uniform number in [0, 1): the first 60 bits of ``sha256(seed:key)``."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:15], 16) / 16**15


def split_for(key: str, seed: int, val: float, test: float) -> str:
    u = draw(key, seed)
    return "test" if u < test else "val" if u < test + val else "train"


def check_fractions(val: float, test: float) -> None:
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DatasetError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")


@dataclass
class SplitTable:
    """A split assignment written by a build: split by image file hash and by group."""

    by_hash: dict[str, str] = field(default_factory=dict)
    by_group: dict[str, str] = field(default_factory=dict)

    def split_of(self, record: Record) -> str | None:
        digest = file_sha256(record.image)
        if digest and digest in self.by_hash:
            return self.by_hash[digest]
        return self.by_group.get(group_key(record))

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]]) -> SplitTable:
        table = cls()
        for row in rows:
            if row["hash"]:
                table.by_hash.setdefault(row["hash"], row["split"])
            table.by_group.setdefault(row["group"], row["split"])
        return table

    @classmethod
    def read(cls, path: str | Path) -> SplitTable:
        """``splits.csv`` (or the build folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / SPLITS_FILE
        try:
            rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        except OSError as err:
            raise DatasetError(f"{path}: cannot read the split assignment ({err.strerror or err}); build the data "
                               "again (dermvlm data build, or the pipeline)") from None
        if not rows or set(COLUMNS) - set(rows[0]):
            raise DatasetError(f"{path}: not a split assignment (expected the columns {', '.join(COLUMNS)})")
        return cls.from_rows(rows)

    @classmethod
    def of_build(cls, data_dir: str | Path | None) -> SplitTable | None:
        """The table a build folder holds, or ``None`` (no folder, or a build from before ``splits.csv``)."""
        if data_dir is None or not (Path(data_dir) / SPLITS_FILE).is_file():
            return None
        return cls.read(data_dir)


def assign_splits(records: list[Record], val: float = 0.1, test: float = 0.2, seed: int = 0,
                  table: SplitTable | None = None) -> None:
    """Give every record without an (official) split one, in place: from ``table`` when it lists the record's
    image or group, else the group's own draw."""
    todo = [r for r in records if not r.split]
    if not todo:
        return
    check_fractions(val, test)
    for r in todo:
        r.split = (table.split_of(r) if table else None) or split_for(group_key(r), seed, val, test)


def split_rows(records: list[Record]) -> list[dict[str, str]]:
    """The rows of ``splits.csv`` for the built records, sorted by id."""
    rows = [{"id": image_id(r), "group": group_key(r), "split": r.split, "hash": file_sha256(r.image) or ""}
            for r in records]
    return sorted(rows, key=lambda row: (row["id"], row["hash"]))


def splits_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def split_change(old: SplitTable | None, old_settings: dict | None, new_rows: list[dict[str, str]],
                 new_settings: dict) -> str | None:
    """One line when a rebuild moves images between splits (a new seed or fractions, or changed groups)."""
    if old is None:
        return None
    moved = [r for r in new_rows if r["hash"] in old.by_hash and old.by_hash[r["hash"]] != r["split"]]
    changed = [f"{k} {old_settings[k]} → {v}" for k, v in new_settings.items()
               if old_settings and k in old_settings and old_settings[k] != v]
    if changed:
        return (f"a new split ({', '.join(changed)}): {len(moved)} of {len(new_rows)} images changed split; "
                "results before and after are not comparable")
    if moved:
        return (f"{len(moved)} of {len(new_rows)} images changed split since the last build (their group changed); "
                "results before and after are not comparable")
    return None
