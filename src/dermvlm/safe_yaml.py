"""YAML reading with bounded cost: every YAML file dermvlm reads (configs, recipes, suites, exclude lists, the
curated knowledge) goes through ``Loader``, which refuses aliases (``*name``) and files over ``MAX_BYTES``.

A few anchors and aliases expand into billions of nodes (the "billion laughs": nine lines of ``&a [*b, *b, ...]``
make ``yaml.safe_load`` take gigabytes and minutes); no dermvlm file needs them, so an alias is an error naming
its line instead of being expanded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 8 * 2**20  # far above any config, recipe or suite; a larger file is not one of them


class AliasError(yaml.YAMLError):
    """A YAML alias (``*name``) where dermvlm accepts none."""

    def __init__(self, line: int, anchor: str):
        super().__init__(f"line {line}: YAML aliases are not accepted (*{anchor[:40]}); write the value out "
                         "where it is used")
        self.problem_mark = None
        self.problem = str(self)


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasError(event.start_mark.line + 1, str(event.anchor))
        return super().compose_node(parent, index)


def load(text: str) -> Any:
    """``yaml.safe_load`` without aliases; raises ``yaml.YAMLError`` (``AliasError`` for an alias)."""
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass


def read_text(path: str | Path) -> str:
    """The text of a YAML file, refused (``ValueError`` naming it) past ``MAX_BYTES``."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path}: {size / 2**20:.0f} MB is too large for a YAML config (at most "
                         f"{MAX_BYTES // 2**20} MB); is it the right file?")
    return path.read_text(encoding="utf-8")
