"""Dataset adapters by source name: each reads one format and yields canonical records."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermvlm.datasets.adapters import ddi, dermamnist, fitzpatrick17k, generic, ham10000, isic, pad_ufes_20, sample
from dermvlm.datasets.adapters.common import AdapterResult, DatasetError, finalize, site_id
from dermvlm.knowledge import KnowledgeGraph


@dataclass(frozen=True)
class SourceInfo:
    loader: Callable[..., tuple[list, list]]
    label_table: str | None  # the graph's dataset label table (None: resolve by name)
    official_splits: bool
    licence: str


SOURCES: dict[str, SourceInfo] = {
    "dermamnist": SourceInfo(dermamnist.load, "dermamnist", True, "CC BY-NC 4.0 (MedMNIST v2 / HAM10000)"),
    "ham10000": SourceInfo(ham10000.load, "ham10000", False, "CC BY-NC 4.0 (HAM10000)"),
    "isic": SourceInfo(isic.load, "isic", False, "per image (ISIC Archive; the shared sample is CC0)"),
    "pad_ufes_20": SourceInfo(pad_ufes_20.load, "pad_ufes_20", False, "CC BY 4.0 (PAD-UFES-20)"),
    "fitzpatrick17k": SourceInfo(fitzpatrick17k.load, "fitzpatrick17k", False, "CC BY-NC-SA 3.0 (Fitzpatrick17k)"),
    "ddi": SourceInfo(ddi.load, "ddi", False, "DDI data use agreement (Stanford AIMI)"),
    "imagefolder": SourceInfo(generic.load_imagefolder, None, False, "as provided by the user"),
    "csv": SourceInfo(generic.load_csv, None, False, "as provided by the user"),
    "sample": SourceInfo(sample.load, None, False, "CC0 1.0 (ISIC) and CC BY 4.0 (PAD-UFES-20)"),
}


def load_source(name: str, kg: KnowledgeGraph, root: str | Path | None = None, label_map: dict | None = None,
                on_unknown_label: str = "error", **options: Any) -> AdapterResult:
    """Read one source into canonical records; sites mapped to graph ids, labels resolved (or a clear error)."""
    if name not in SOURCES:
        raise DatasetError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    info = SOURCES[name]
    params = inspect.signature(info.loader).parameters
    unknown = [k for k in options if k not in params]
    if unknown:
        allowed = [p for p in params if p != "root"]
        raise DatasetError(f"source {name!r}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    args = dict(options)
    if "root" in params:
        if root is None and name != "sample":
            raise DatasetError(f"source {name!r} needs a root folder")
        args["root"] = Path(root) if root is not None else None
    rows, skipped = info.loader(**args)
    for r in rows:
        if r.site:
            r.meta.setdefault("site_text", r.site)
        r.site = site_id(kg, r.site)
    records, unknown_skipped = finalize(rows, kg, name, info.label_table, label_map, on_unknown_label)
    return AdapterResult(records=records, skipped=list(skipped) + unknown_skipped, source=name)
