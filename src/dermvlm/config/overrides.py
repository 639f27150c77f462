"""Command-line overrides of a config file's values: ``--set stages.grpo.trl.learning_rate=5e-6 --set
model.lora.r=16``. The value is read as YAML (``16`` an int, ``[a, b]`` a list, ``null``); a list of named items
(``stages``) is addressed by name or by index. The merged mapping is then validated exactly like the file."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from dermvlm import safe_yaml
from dermvlm.config.base import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], the value read as YAML)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. model.lora.r=16")
    try:
        value = safe_yaml.load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(err, 'problem', err)})") from None
    return [p.strip() for p in parts], value


def _child(node: Any, part: str, item: str, path: str) -> tuple[Any, Any]:
    """The container ``node`` and the key or index ``part`` names in it."""
    if isinstance(node, dict):
        return node, part
    if isinstance(node, list):
        if part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ConfigError(f"--set {item}: {path} has {len(node)} items; index {index} is out of range")
            return node, index
        names = [x.get("name") for x in node if isinstance(x, dict)]
        if part not in names:
            known = ", ".join(str(n) for n in names if n is not None) or "none named"
            raise ConfigError(f"--set {item}: {path} has no item named {part!r} ({known}; or give an index)")
        return node, names.index(part)
    raise ConfigError(f"--set {item}: {path} is a value ({node!r}), not a section with keys")


def apply_overrides(data: Any, items: list[str] | None) -> Any:
    """A copy of the parsed config ``data`` with every ``KEY=VALUE`` of ``items`` set (sections created as
    needed); raises ``ConfigError`` naming the ``--set`` item that cannot be placed."""
    if not items:
        return data
    if not isinstance(data, dict):
        return data  # the validator names the file's real problem
    merged = copy.deepcopy(data)
    for item in items:
        parts, value = parse_override(item)
        node: Any = merged
        for depth, part in enumerate(parts):
            container, key = _child(node, part, item, ".".join(parts[:depth]) or "the config")
            if depth == len(parts) - 1:
                container[key] = value
                break
            if isinstance(container, dict) and container.get(key) is None:
                container[key] = {}
            node = container[key]
    return merged
