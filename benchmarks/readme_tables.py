"""Keep the documents' result tables equal to what the benchmarks wrote: the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in a markdown file (README.md, docs/BENCHMARKS.md) is replaced by a
benchmark's markdown table."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def update_readme(name: str, text: str, readme: Path = README) -> bool:
    """Replace the block ``name`` of ``readme`` with ``text``; False (and no change) when the markers are missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = readme.read_text()
    if begin not in body or end not in body:
        return False
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    tmp.replace(readme)
    return True
