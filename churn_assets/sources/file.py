"""A CSV or Parquet export as a source."""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from pyarrow import ArrowException

from churn_assets.core.spec import FeatureSpec
from churn_assets.sources.base import CustomerSource, SourceBatch, SourceError


class FileSource(CustomerSource):
    """A CSV or Parquet export: one path or a glob, read whole on every run.

    Idempotent by construction: rows are upserted by (id, snapshot), so re-reading the
    same file adds nothing. A file without the spec's snapshot column (such as the IBM
    Telco export) can get one from row order: ``snapshot_weeks`` consecutive weekly
    snapshots ending on ``snapshot_end``.

    ``as_of`` is the data's "today" (YYYY-MM-DD; the run's ``as_of`` wins over it). Empty
    means the latest snapshot in the export. Snapshots after it are not yet known on that
    day and are left out, and those within the spec's label horizon before it keep
    provisional labels, so a static export can be replayed week by week honestly.
    """

    path: str
    snapshot_weeks: int = 0
    snapshot_end: str = "2026-01-05"
    as_of: str = ""

    def _files(self) -> list[Path]:
        matches = sorted(glob.glob(self.path)) if any(ch in self.path for ch in "*?[") else [self.path]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise SourceError(f"file source: nothing matches {self.path!r} (from {Path.cwd()})")
        return files

    @staticmethod
    def _read(path: Path, spec: FeatureSpec, rows: int | None = None) -> pd.DataFrame:
        """The file's records (its first ``rows`` only, if given)."""
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                if rows is None:
                    return pd.read_parquet(path)
                parquet = pq.ParquetFile(path)
                first = next(parquet.iter_batches(batch_size=rows), None)
                return parquet.schema_arrow.empty_table().to_pandas() if first is None else first.to_pandas()
            return pd.read_csv(path, dtype={spec.id_column: str}, nrows=rows)
        except (OSError, ValueError, ArrowException) as exc:
            raise SourceError(f"file source: cannot read {path}: {exc}") from exc

    def sample(self, spec: FeatureSpec, rows: int = 5) -> pd.DataFrame:
        return self._with_snapshots(self._read(self._files()[0], spec, rows), spec)

    def _with_snapshots(self, records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
        """``records`` with a snapshot column from row order when ``snapshot_weeks`` asks."""
        if self.snapshot_weeks > 0:
            if spec.timestamp_column in records.columns:
                raise SourceError(
                    f"file source: {self.path} already has {spec.timestamp_column!r};"
                    " unset snapshot_weeks")
            end = pd.Timestamp(self.snapshot_end)
            week = (pd.RangeIndex(len(records)) * self.snapshot_weeks) // max(len(records), 1)
            offsets = pd.to_timedelta((self.snapshot_weeks - 1 - week) * 7, unit="D")
            records[spec.timestamp_column] = end - offsets
        return records

    def fetch(self, spec: FeatureSpec, watermark: str | None,
              as_of: pd.Timestamp | None = None) -> SourceBatch:
        records = self._with_snapshots(
            pd.concat([self._read(path, spec) for path in self._files()], ignore_index=True), spec)
        stamps = pd.to_datetime(records.get(spec.timestamp_column), errors="coerce", format="mixed")
        if as_of is None and self.as_of:
            as_of = pd.Timestamp(self.as_of)
        description = f"file: {', '.join(str(p) for p in self._files())}"
        if as_of is not None:
            as_of = pd.Timestamp(as_of).normalize()
            if stamps is not None:
                # Unparsable stamps stay in: validation names them rather than us hiding them.
                later = (stamps > as_of).fillna(False).to_numpy(dtype=bool)
                if later.any():
                    records = records[~later].reset_index(drop=True)
                    description += f" ({int(later.sum())} snapshots after {as_of.date()} left out)"
        elif stamps is not None and stamps.notna().any():
            as_of = stamps.max()
        else:
            as_of = pd.Timestamp.now()
        return SourceBatch(records, watermark, pd.Timestamp(as_of), description)

    def describe(self) -> str:
        return f"file ({self.path})"
