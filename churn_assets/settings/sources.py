"""The ``[source]`` section: where new customer records come from (docs/ingestion.md).

One model per kind, told apart by ``kind``; ``SourceSettings`` is their union.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from churn_assets.core.redaction import has_credentials
from churn_assets.settings.base import StrictModel


class SimulatorSourceSettings(StrictModel):
    """The built-in simulated customer base (offline, deterministic)."""

    kind: Literal["simulator"] = "simulator"
    n_customers: int = Field(3000, ge=10, le=50_000_000)
    start_date: dt.date = Field(dt.date(2026, 1, 5), strict=False)
    seed: int = 7
    # Default "today" of the data; a run's `as_of` run config overrides it.
    as_of: dt.date | None = Field(None, strict=False)
    # A named scenario (sources.simulation.SCENARIOS) from `scenario_start` on: what the
    # loop must survive, for backtests and demos. "stable": the slow drift alone.
    scenario: Literal["stable", "concept_shift", "new_category", "missing_feature"] = "stable"
    scenario_start: dt.date = Field(dt.date(2026, 7, 6), strict=False)


class FileSourceSettings(StrictModel):
    """A CSV or Parquet export: a path or a glob, relative to the configuration file."""

    kind: Literal["file"]
    path: str
    snapshot_weeks: int = Field(0, ge=0, le=520)
    snapshot_end: dt.date = Field(dt.date(2026, 1, 5), strict=False)
    # The data's "today": labels of snapshots within the label horizon before it are
    # provisional. Empty: the latest snapshot in the export.
    as_of: dt.date | None = Field(None, strict=False)


class HttpSourceSettings(StrictModel):
    """A REST API (docs/ingestion.md); the token comes from the variable ``token_env``."""

    kind: Literal["http"]
    base_url: str
    token_env: str = "CHURN_ASSETS_API_TOKEN"
    page_size: int = Field(5000, ge=1, le=100_000)
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0, le=20)
    read_retries: int = Field(1, ge=0, le=20)
    backoff_factor: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    max_retry_after: int = Field(300, ge=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # Neither message quotes the value: the loader adds it, masked (it may hold the
        # very secret that is refused here).
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        if has_credentials(value):
            raise ValueError("must not carry credentials (user:password@ or token@); put the"
                             " token in the variable that source.token_env names")
        return value.rstrip("/")


class SqlSourceSettings(StrictModel):
    """A table or query in a SQL database (SQLAlchemy URL); one of url, url_env, path."""

    kind: Literal["sql"]
    url: str | None = None
    url_env: str | None = None
    path: str | None = None  # SQLite file, relative to the configuration file
    table: str | None = None
    query: str | None = None
    updated_at_column: str = ""
    chunk_size: int = Field(50_000, ge=1)
    as_of: dt.date | None = Field(None, strict=False)

    @model_validator(mode="after")
    def _one_of_each(self):
        if sum(v is not None for v in (self.url, self.url_env, self.path)) != 1:
            raise ValueError("needs exactly one of url, url_env (a variable holding the URL)"
                             " or path (a SQLite file)")
        if (self.table is None) == (self.query is None):
            raise ValueError("needs exactly one of table or query")
        return self


SourceSettings = Annotated[
    Union[SimulatorSourceSettings, FileSourceSettings, HttpSourceSettings, SqlSourceSettings],
    Field(discriminator="kind"),
]
