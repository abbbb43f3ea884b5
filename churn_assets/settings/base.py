"""What every settings section shares: strict models and the one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """A configuration value that cannot be used, named with its file and key."""


class StrictModel(BaseModel):
    # Unknown keys are errors: a misspelled key silently falling back to a default is
    # the worst kind of configuration bug.
    model_config = ConfigDict(extra="forbid", frozen=True)
