"""Validation errors as one line per field: the path (``stages[1].trl.learning_rate``), what is wrong and what is
allowed (the keys a section accepts, with the closest match to a typo)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from dermvlm.config.stages import STAGE_KINDS, stage_kind


def unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/list annotations."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in unwrap(a)]
    if origin in (list, tuple, dict):
        args = typing.get_args(annotation)
        return [t for a in args[-1:] for t in unwrap(a)]
    return [annotation]


def _model_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The schema class that holds the field at ``loc`` (its parent section)."""
    current: Any = schema
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(current, list):  # a tagged union: the tag in ``loc`` names the member
            current = next((m for m in current if m.model_fields.get("kind") and
                            m.model_fields["kind"].default == part), None)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        models = [t for t in unwrap(current.model_fields[part].annotation)
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return None
        current = models[0] if len(models) == 1 else models
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_loc(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if i >= 2 and part in STAGE_KINDS and loc[i - 2] == "stages" and isinstance(loc[i - 1], int):
            continue  # the union tag pydantic adds after ``stages[i]``
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def closest(key: str, allowed: list[str]) -> str | None:
    """The allowed name a typo most likely meant: a close spelling, else a prefix (``rank`` → ``r``)."""
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return close[0]
    prefixes = sorted((a for a in allowed if key.startswith(a) or a.startswith(key)), key=len, reverse=True)
    return prefixes[0] if prefixes else None


def did_you_mean(key: str, allowed: list[str]) -> str:
    match = closest(key, allowed)
    return f" (did you mean '{match}'?)" if match else ""


def allowed_keys_message(key: str, allowed: list[str]) -> str:
    hint = did_you_mean(key, allowed)
    return f"unknown key '{key}'{hint}; allowed keys: {', '.join(sorted(allowed))}"


def error_lines(err: ValidationError, schema: type[BaseModel]) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p and "]" in p))
        path = format_loc(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(schema, loc)
            allowed = list(parent.model_fields) if parent else []
            lines.append(f"{path}: {allowed_keys_message(str(loc[-1]), allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        elif e["type"] == "stage_kind":
            lines.append(f"{path}.kind: {e['msg']} (got {stage_kind(e.get('input'))!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "literal_error":
                msg = msg.replace("Input should be", "allowed values are")
            got = e.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{path}: {msg}{got_s}")
    return lines
