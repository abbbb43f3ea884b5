"""What every settings section shares: strict models and the one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SettingsError(ValueError):
    """A configuration value that cannot be used, named with its file and key."""


class StrictModel(BaseModel):
    # Unknown keys are errors: a misspelled key silently falling back to a default is
    # the worst kind of configuration bug. Values are not converted either: "yes" is not
    # true and "12" is not 12, so a quoted value means what it says or fails. (Dates are
    # the exception, on their own fields: quoting a TOML date is common and unambiguous.)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
