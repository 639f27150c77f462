"""The error every config problem raises and the strict base of every schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. ``str()`` is the message for the user."""


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
