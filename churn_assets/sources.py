"""Where new customer records come from: the ``CustomerSource`` resource interface.

Every source answers one question, "what changed since this watermark?", with a
``SourceBatch``. The pipeline stores the records, then the watermark, so a failure in
between re-fetches rather than loses data.
"""

from __future__ import annotations

import datetime as dt
import glob
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from churn_assets.simulator import SimulatorSettings, simulate
from churn_assets.spec import FeatureSpec


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


def next_watermark(records: pd.DataFrame, column: str, previous: str | None) -> str | None:
    """The newest ``column`` value of a fetched batch (ISO 8601), or ``previous`` if empty."""
    return records[column].max().isoformat() if len(records) else previous


class CustomerSource(dg.ConfigurableResource):
    """Base class of customer-record sources."""

    def fetch(self, spec: FeatureSpec, watermark: str | None) -> SourceBatch:
        raise NotImplementedError

    def count_new(self, spec: FeatureSpec, watermark: str | None) -> NewRecords:
        """How many records changed past ``watermark``; sources override this with a
        cheaper question (a count query, a count endpoint) than a whole fetch."""
        batch = self.fetch(spec, watermark)
        return NewRecords(len(batch.records), batch.watermark if len(batch.records) else None)

    def describe(self) -> str:
        return type(self).__name__


class SimulatorSource(CustomerSource):
    """The built-in simulated e-commerce SaaS customer base (offline, deterministic).

    ``as_of`` ("YYYY-MM-DD") fixes the simulated "today"; empty means the real date, so
    a weekly schedule sees one new snapshot week each Monday.
    """

    n_customers: int = 3000
    start_date: str = "2026-01-05"
    seed: int = 7
    as_of: str = ""

    def settings(self, spec: FeatureSpec) -> SimulatorSettings:
        return SimulatorSettings(n_customers=self.n_customers, start_date=self.start_date,
                                 seed=self.seed, horizon_days=spec.label_horizon_days or 28)

    def current_date(self) -> pd.Timestamp:
        if self.as_of:
            return pd.Timestamp(self.as_of).normalize()
        return pd.Timestamp(dt.datetime.now(dt.timezone.utc).date())

    def fetch(self, spec: FeatureSpec, watermark: str | None) -> SourceBatch:
        as_of = self.current_date()
        records = simulate(self.settings(spec), as_of)
        if watermark:
            records = records[records["updated_at"] > pd.Timestamp(watermark)]
        records = records.reset_index(drop=True)
        newest = records["updated_at"].max() if len(records) else None
        new_mark = str(newest) if newest is not None else watermark
        return SourceBatch(records, new_mark, as_of,
                           f"simulator: {self.n_customers} customers, as of {as_of.date()}")

    def describe(self) -> str:
        return f"simulator (n_customers={self.n_customers}, seed={self.seed}, as_of={self.as_of or 'today'})"


class FileSource(CustomerSource):
    """A CSV or Parquet export: one path or a glob, read whole on every run.

    Idempotent by construction: rows are upserted by (id, snapshot), so re-reading the
    same file adds nothing. A file without the spec's snapshot column (such as the IBM
    Telco export) can get one from row order: ``snapshot_weeks`` consecutive weekly
    snapshots ending on ``snapshot_end``.
    """

    path: str
    snapshot_weeks: int = 0
    snapshot_end: str = "2026-01-05"

    def _files(self) -> list[Path]:
        matches = sorted(glob.glob(self.path)) if any(ch in self.path for ch in "*?[") else [self.path]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise SourceError(f"file source: nothing matches {self.path!r} (from {Path.cwd()})")
        return files

    def fetch(self, spec: FeatureSpec, watermark: str | None) -> SourceBatch:
        frames = []
        for path in self._files():
            try:
                if path.suffix.lower() in (".parquet", ".pq"):
                    frames.append(pd.read_parquet(path))
                else:
                    frames.append(pd.read_csv(path, dtype={spec.id_column: str}))
            except (OSError, ValueError) as exc:
                raise SourceError(f"file source: cannot read {path}: {exc}") from exc
        records = pd.concat(frames, ignore_index=True)
        if self.snapshot_weeks > 0:
            if spec.timestamp_column in records.columns:
                raise SourceError(
                    f"file source: {self.path} already has {spec.timestamp_column!r};"
                    " unset snapshot_weeks")
            end = pd.Timestamp(self.snapshot_end)
            week = (pd.RangeIndex(len(records)) * self.snapshot_weeks) // max(len(records), 1)
            offsets = pd.to_timedelta((self.snapshot_weeks - 1 - week) * 7, unit="D")
            records[spec.timestamp_column] = end - offsets
        as_of = pd.Timestamp(self.snapshot_end) if self.snapshot_weeks > 0 else None
        if as_of is None:
            stamps = pd.to_datetime(records.get(spec.timestamp_column), errors="coerce")
            as_of = stamps.max() if stamps is not None and stamps.notna().any() else pd.Timestamp.now()
        return SourceBatch(records, watermark, pd.Timestamp(as_of),
                           f"file: {', '.join(str(p) for p in self._files())}")

    def describe(self) -> str:
        return f"file ({self.path})"
