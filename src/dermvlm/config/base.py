"""The error every config problem raises and the strict base of every schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A seed: torch, numpy and Python take 32-bit seeds; a bool is not one (strict: no true, no "3", no 3.0).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. ``str()`` is the message for the user."""


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
