"""Read a YAML config file and validate it against its schema, every mistake a ``ConfigError`` naming the file
and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dermvlm.config.base import ConfigError
from dermvlm.config.messages import error_lines
from dermvlm.config.overrides import apply_overrides
from dermvlm.config.run import RunConfig

T = TypeVar("T", bound=BaseModel)


def validate(data: Any, schema: type[BaseModel], source: str = "<config>") -> BaseModel:
    """Validate a parsed mapping against ``schema``; raise ``ConfigError`` naming ``source`` and the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, not {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        lines = error_lines(err, schema)
        sep = " " if len(lines) == 1 else "\n  "  # one mistake: one line; several: one line each under the file
        raise ConfigError(f"{source}: invalid {schema.__name__}:{sep}" + "\n  ".join(lines)) from None


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    from dermvlm import safe_yaml

    try:
        return safe_yaml.load(safe_yaml.read_text(p))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          "re-save it as UTF-8") from None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except safe_yaml.AliasError as err:
        raise ConfigError(f"{p}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None


def load_config(path: str | Path, schema: type[T] = RunConfig,  # type: ignore[assignment]
                overrides: list[str] | None = None) -> T:
    """Read a YAML config file, apply the command line's ``--set KEY=VALUE`` ``overrides`` and validate it."""
    source = f"{path} with --set" if overrides else str(path)
    return validate(apply_overrides(read_yaml(path), overrides), schema, source)  # type: ignore[return-value]
