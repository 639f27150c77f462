"""The error every config problem raises and the strict base of every schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _codes_as_text(value: object) -> object:
    """YAML reads ``0: melanoma`` with an integer key; a label in a CSV is text, so numeric codes are taken as such."""
    if isinstance(value, dict):
        return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in value.items()}
    return value


# A label_map: your label (numeric codes included, as YAML reads them) → a name the knowledge graph knows.
LabelMap = Annotated[dict[str, str], BeforeValidator(_codes_as_text)]

# A seed: torch, numpy and Python take 32-bit seeds; a bool is not one (strict: no true, no "3", no 3.0).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. ``str()`` is the message for the user."""


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
