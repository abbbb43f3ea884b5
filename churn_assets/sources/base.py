"""Where new customer records come from: the ``CustomerSource`` interface.

Every source answers one question, "what changed since this watermark?", with a
``SourceBatch``. The pipeline stores the records, then the watermark, so a failure in
between re-fetches rather than loses data.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict

from churn_assets.core.spec import FeatureSpec


class SourceError(RuntimeError):
    """The source could not deliver records; the message says what to fix.

    Permanent: retrying the same request cannot help (bad token, wrong URL, a response
    that breaks the contract), so the run fails at once.
    """


class TransientSourceError(SourceError):
    """The source may well answer on a later try (timeouts, 5xx, 429 after the source's
    own retries ran out); the ingestion asset's ``RetryPolicy`` tries again."""


@dataclass(frozen=True)
class NewRecords:
    """What a cheap look at the source found past a watermark (for the new-data sensor)."""

    count: int
    newest: str | None


@dataclass
class SourceBatch:
    """Records changed since the previous watermark, and the watermark to store after them.

    ``as_of``: the moment the source's data reflects; labels of snapshots within the
    label horizon of it are still provisional.
    """

    records: pd.DataFrame
    watermark: str | None
    as_of: pd.Timestamp
    description: str


def parse_updated_at(frame: pd.DataFrame, column: str, where: str) -> pd.DataFrame:
    """``column`` as naive UTC timestamps, so watermarks compare as instants, not text."""
    if column not in frame.columns:
        raise SourceError(f"{where}: records have no {column!r} column (the watermark column);"
                          f" columns are {sorted(frame.columns)[:20]}")
    try:
        stamps = pd.to_datetime(frame[column], format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{where}: column {column!r} holds values that are not ISO 8601"
                          f" timestamps: {exc}") from None
    frame[column] = stamps.dt.tz_localize(None).astype("datetime64[ns]")
    return frame


def spec_columns(spec: FeatureSpec) -> list[str]:
    """Every column a record must have for ``spec``: keys, target, features."""
    return [*spec.key_columns, spec.target_column, *spec.feature_columns]


def expected_columns(spec: FeatureSpec, source: CustomerSource) -> set[str]:
    """The columns a batch of ``source`` is expected to have: the spec's and the watermark
    column, whatever the source calls it (anything else is a column no model uses)."""
    return {*spec_columns(spec), spec.updated_at_column or "updated_at",
            getattr(source, "updated_at_column", "") or "updated_at"}


def missing_spec_columns(spec: FeatureSpec, columns) -> list[str]:
    """The columns of ``spec`` (``spec_columns``) that are not in ``columns``, in spec order."""
    present = set(columns)
    return [c for c in spec_columns(spec) if c not in present]


def column_changes(batch_columns: list[str], expected: set[str], stored_columns: list[str]) -> dict:
    """How a batch's columns differ from the ``expected`` ones (the spec's and the
    watermark column) and from the ones the history stores; lists in batch order.

    ``source_columns_not_in_spec``: sent by the source, used by no model.
    ``new_source_columns``: not in the history (with no history yet: not expected).
    ``vanished_source_columns``: in the history, missing from the batch (stored as
    missing values; a spec column among them fails validation by name).
    ``source_columns_not_stored``: new and not in the spec, while the history exists:
    its columns were fixed by its first batch, so these stay in the landed batch only.
    """
    unused = [c for c in batch_columns if c not in expected]
    if not stored_columns:
        return {"source_columns_not_in_spec": unused, "new_source_columns": unused,
                "vanished_source_columns": [], "source_columns_not_stored": []}
    stored, sent = set(stored_columns), set(batch_columns)
    new = [c for c in batch_columns if c not in stored]
    return {"source_columns_not_in_spec": unused, "new_source_columns": new,
            "vanished_source_columns": [c for c in stored_columns if c not in sent],
            "source_columns_not_stored": [c for c in new if c not in expected]}


def describe_column_changes(changes: dict) -> str:
    """One line: the new and vanished source columns, and what happens to the new ones."""
    parts = []
    if changes.get("new_source_columns"):
        unused, dropped = set(changes["source_columns_not_in_spec"]), set(changes["source_columns_not_stored"])
        parts.append("new " + ", ".join(
            c + (" (not in the feature spec: kept in the landed batch, not in the history)" if c in dropped else
                 " (not in the feature spec: stored, not used)" if c in unused else "")
            for c in changes["new_source_columns"]))
    if changes.get("vanished_source_columns"):
        parts.append("vanished " + ", ".join(changes["vanished_source_columns"]))
    return "source columns changed: " + "; ".join(parts)


def next_watermark(records: pd.DataFrame, column: str, previous: str | None) -> str | None:
    """The newest ``column`` value of a fetched batch (ISO 8601), or ``previous`` if empty."""
    return records[column].max().isoformat() if len(records) else previous


class CustomerSource(BaseModel):
    """Base class of customer-record sources: plain, immutable configuration objects.

    ``fetch(spec, watermark, as_of)``: the records changed past ``watermark``. ``as_of``
    is the run's "today" (Dagster run config); None means the source's own default.
    The Dagster resource that hands a source to the assets lives in ``defs.resources``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def fetch(self, spec: FeatureSpec, watermark: str | None,
              as_of: pd.Timestamp | None = None) -> SourceBatch:
        raise NotImplementedError

    def count_new(self, spec: FeatureSpec, watermark: str | None) -> NewRecords:
        """How many records changed past ``watermark``; sources override this with a
        cheaper question (a count query, a count endpoint) than a whole fetch."""
        batch = self.fetch(spec, watermark)
        return NewRecords(len(batch.records), batch.watermark if len(batch.records) else None)

    def sample(self, spec: FeatureSpec, rows: int = 5) -> pd.DataFrame | None:
        """A few records as ``fetch`` would deliver them (for their columns), read as
        cheaply as the source allows: a few rows of a file, a LIMIT query, an API's first
        page. None where there is no cheap way. Raises ``SourceError`` like ``fetch``."""
        return None

    def describe(self) -> str:
        return type(self).__name__
