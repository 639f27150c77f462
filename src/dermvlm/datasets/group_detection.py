"""Leakage by default impossible: a labels CSV without a named group column is searched for one.

A column whose name says patient or lesion (``patient_id``, ``patient``, ``subject``, ``lesion_id``, ...) is used,
and the build says which. Without one, file names that carry a shared prefix (``PAT_311_666_191.png`` and
``PAT_311_667_12.png``; ``patient12_a.jpg``) are named in a one-line warning: images of one patient may then sit in
train and test, and the fix is ``group_col``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

# column names that say patient or lesion, in order of preference (compared lower-case, without spaces/dashes)
GROUP_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "subjectid", "subject", "participant_id",
                 "participant", "case_id", "case", "lesion_id", "lesionid", "lesion", "person_id", "person",
                 "individual", "mrn")
_PREFIX = re.compile(r"^([A-Za-z]+[_-]?\d+)[_-]")  # PAT_311_..., patient12_..., P7-...


def column_named(columns: list[str], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` among ``columns``, compared lower-case with spaces and dashes as underscores."""
    by_norm = {re.sub(r"[\s\-]+", "_", c.strip().lower()): c for c in columns}
    return next((by_norm[n] for n in names if n in by_norm), None)


def find_group_column(columns: list[str]) -> str | None:
    """The CSV column that names a patient or lesion, if one does."""
    return column_named(columns, GROUP_COLUMNS)


def file_name_groups(names: list[str]) -> tuple[int, list[str]]:
    """How many images share a file-name prefix with another image, and a few such prefixes."""
    prefixes = Counter(m.group(1) for n in names if (m := _PREFIX.match(Path(n).name)))
    shared = {p: c for p, c in prefixes.items() if c > 1}
    return sum(shared.values()), sorted(shared)[:3]


def group_column(columns: list[str], names: list[str], where: str) -> str | None:
    """The group column to use when none was named: a patient/lesion column (said in a log line), else ``None``,
    with a one-line warning when file names suggest groups."""
    found = find_group_column(columns)
    if found:
        log.info("%s: grouping images by column %r (a patient/lesion column): splits never cut one; set group_col "
                 "to choose another", where, found)
        return found
    n, examples = file_name_groups(names)
    if n:
        log.warning("%s: no group column, and %d images share a file-name prefix with another (e.g. %s): if those "
                    "are one patient's images they may land in train and test; set group_col (--group-col) to the "
                    "CSV column naming the patient or lesion", where, n, ", ".join(examples))
    return None
