"""The bundled CC0/CC BY sample (``dermvlm/sample_data``): ISIC dermoscopy and PAD-UFES-20 photos."""

from __future__ import annotations

from pathlib import Path

from dermvlm.datasets.adapters.common import DatasetError, RawRow, parse_fitzpatrick, read_csv
from dermvlm.datasets.sample import sample_dir


def load(root: Path | None = None, datasets: list[str] | None = None) -> tuple[list[RawRow], list[tuple[str, str]]]:
    """The sample's records; ``datasets`` keeps only those of the named origins (``isic``, ``pad_ufes_20``)."""
    base = Path(root) if root else sample_dir()
    out = []
    rows = read_csv(base / "records.csv", required=("image", "dataset", "source_label", "group_id"))
    origins = sorted({r["dataset"] for r in rows})
    unknown = sorted(set(datasets or ()) - set(origins))
    if unknown:
        raise DatasetError(f"source sample: options.datasets: {', '.join(unknown)} not in the sample; it holds "
                           f"{', '.join(origins)}")
    for r in rows:
        if datasets and r["dataset"] not in datasets:
            continue
        meta = {k: r[k] for k in ("age", "sex", "licence", "source") if r.get(k)}
        for k in ("symptoms", "symptoms_absent"):  # PAD-UFES-20's clinical fields, ";"-separated
            if r.get(k):
                meta[k] = r[k].split(";")
        out.append(RawRow(image=str(base / r["image"]), source_label=r["source_label"], group_id=r["group_id"],
                          fitzpatrick=parse_fitzpatrick(r.get("fitzpatrick")), site=r.get("site") or None,
                          meta={**meta, "source_dataset": r["dataset"]}, label_dataset=r["dataset"]))
    return out, []
