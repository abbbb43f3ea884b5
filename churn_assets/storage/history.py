"""The durable customer history: every snapshot ever collected, keyed by customer and date.

Layout (``directory`` = ``$CHURN_ASSETS_HOME/history``)::

    weeks/2026-05-04.parquet   the snapshots of one week (the Monday of the snapshot date)
    state.json                 the source watermark, written after the week files
    .lock                      fcntl lock held around every read-modify-write

Partitioning by week is what keeps a weekly refresh flat as the history grows: an
upsert reads and rewrites only the weeks its batch touches, and training reads only
the weeks of its window (``load(since=...)``), not the whole past.

Crash safety: every week file is replaced atomically (temporary file, fsync, rename),
and ``state.json`` only after all of them. A crash mid-upsert therefore leaves each week
either old or new and the watermark old, so the next run re-fetches the batch and the
idempotent upsert finishes the job (rows already written count as unchanged).

A history in the old single-file layout (``customers.parquet``) is split into weeks by
the first upsert; the old file is removed only once every week file is on disk.

On object storage (``s3://`` home, storage/location.py) a week file is replaced by one
PUT, which is just as all-or-nothing, and pyarrow reads through the s3fs filesystem.
There is no ``.lock``: object storage has no advisory locks, so a writer relies on
being the only one (the ``churn_refresh`` run queue admits one refresh at a time,
docs/deploy.md), and a reader sees each week file whole, old or new.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from churn_assets.storage import location
from churn_assets.storage.atomic import atomic_write_bytes, atomic_write_json, fsync_dir

LEGACY_FILE = "customers.parquet"
# Stored in every week file's schema, so the files describe themselves: which columns
# key a row and which one the weeks are cut by.
LAYOUT_KEY = b"churn_assets.history"


class HistoryError(ValueError):
    """The stored history cannot be used as it is; the message names the file."""


@dataclass(frozen=True)
class UpsertSummary:
    """What one ingestion did to the history (row counts)."""

    received: int
    inserted: int
    updated: int
    unchanged: int
    total_rows: int

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


def week_start(dates: pd.Series) -> pd.Series:
    """The Monday (00:00) of each date: the week a snapshot is stored under."""
    stamps = pd.to_datetime(dates)
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_localize(None)
    days = stamps.dt.normalize()
    return days - pd.to_timedelta(days.dt.day_of_week, unit="D")


class CustomerHistory:
    """Customer snapshots in one Parquet file per week, upserted by the key columns
    (customer id, snapshot date); the last key column is the one weeks are cut by."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = location.location(directory)
        self.remote = location.is_remote(self.directory)
        # What pyarrow opens: the s3fs filesystem and "bucket/key" paths, or None and local paths.
        self._filesystem = self.directory.fs if self.remote else None
        self.weeks_dir = self.directory / "weeks"
        self.legacy_path = self.directory / LEGACY_FILE
        self.state_path = self.directory / "state.json"
        self.lock_path = self.directory / ".lock"

    # ---- reading -------------------------------------------------------------------

    def week_path(self, week: pd.Timestamp) -> Path:
        return self.weeks_dir / f"{pd.Timestamp(week):%Y-%m-%d}.parquet"

    def _arrow_path(self, week: pd.Timestamp) -> str:
        """``week_path`` as pyarrow takes it together with ``self._filesystem``."""
        return self._arrow(self.week_path(week))

    def _arrow(self, path) -> str:
        return path.path if self.remote else str(path)

    def weeks(self) -> list[pd.Timestamp]:
        """The Mondays of the stored weeks, oldest first."""
        if not self.weeks_dir.is_dir():
            return []
        # Temporary files of an interrupted (local) write start with "." and end in ".tmp".
        names = [p.name for p in self.weeks_dir.iterdir()]
        return sorted(pd.Timestamp(n[:-len(".parquet")]) for n in names
                      if n[:1].isdigit() and n.endswith(".parquet"))

    def load(self, since=None, until=None, columns: list[str] | None = None) -> pd.DataFrame | None:
        """Stored snapshots dated ``since <= date <= until`` (either bound optional), sorted
        by the key columns; only the week files overlapping the range are opened, and only
        ``columns`` (all when None) are read. None when nothing is stored."""
        with self._locked(exclusive=False):
            if self.legacy_path.exists():
                # Not migrated yet (only an upsert knows the key columns to cut by).
                if since is not None or until is not None:
                    raise HistoryError(f"{self.legacy_path} is in the old single-file layout; an"
                                       " upsert migrates it to weekly files before windowed reads")
                return pd.read_parquet(self._arrow(self.legacy_path), columns=columns,
                                       filesystem=self._filesystem)
            return self._read(since, until, columns)

    def columns(self) -> list[str]:
        """The columns the history stores (its newest week file's, from the Parquet footer;
        no data is read); empty when nothing is stored."""
        schema = self._schema()
        return [] if schema is None else [name for name in schema.names if not name.startswith("__index")]

    def total_rows(self) -> int:
        """Row count from the week files' Parquet footers (no data is read)."""
        return sum(pq.read_metadata(self._arrow_path(w), filesystem=self._filesystem).num_rows
                   for w in self.weeks())

    def state(self) -> dict:
        if not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            where = (f"{exc.msg} at line {exc.lineno} column {exc.colno}"
                     if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text")
            raise HistoryError(
                f"{self.state_path} is not valid JSON ({where}); it holds the source watermark:"
                " fix it, or delete it to re-fetch everything (the upsert is idempotent)") from None
        if not isinstance(data, dict):
            raise HistoryError(f"{self.state_path} must hold a JSON object, not {type(data).__name__}")
        return data

    # ---- writing -------------------------------------------------------------------

    def upsert(self, records: pd.DataFrame, key_columns: list[str],
               state: dict | None = None) -> UpsertSummary:
        """Merge ``records`` into the history; a key seen before is replaced, never duplicated.

        Only the weeks the batch touches are read and rewritten. ``state`` (e.g. the source
        watermark) is written only after every week file.
        """
        missing = [c for c in key_columns if c not in records.columns]
        if missing:
            raise ValueError(f"records lack the key columns {missing}")
        if len(key_columns) < 2:
            raise ValueError("key_columns must end with the snapshot date column")
        records = records.drop_duplicates(subset=key_columns, keep="last").reset_index(drop=True)
        weeks = week_start(records[key_columns[-1]])
        if weeks.isna().any():
            raise ValueError(f"{int(weeks.isna().sum())} records have no {key_columns[-1]}")
        with self._locked(exclusive=True):
            self._migrate_legacy(key_columns)
            self._remove_stale_temporaries()
            schema = self._schema()
            if schema is None:
                schema = _with_layout(pa.Schema.from_pandas(records, preserve_index=False), key_columns)
            else:
                stored_keys = _layout(schema)["key_columns"]
                if stored_keys != list(key_columns):
                    raise ValueError(f"the history is keyed by {stored_keys}, not {list(key_columns)}")
                extra = [c for c in records.columns if c not in schema.names]
                if extra:
                    raise ValueError(f"new records bring columns the history does not have: {extra}")
                reference = schema.empty_table().to_pandas()
                records = _align_dtypes(records.reindex(columns=reference.columns), reference)
            inserted = updated = 0
            # Group by week, oldest first; the rows keep their batch order within a week.
            for week, index in sorted(records.groupby(weeks.to_numpy()).indices.items()):
                new_rows, changed_rows = self._upsert_week(
                    pd.Timestamp(week), records.iloc[index], key_columns, schema)
                inserted += new_rows
                updated += changed_rows
            if state is not None:
                atomic_write_json(self.state_path, state)
            unchanged = len(records) - inserted - updated
            return UpsertSummary(len(records), inserted, updated, unchanged, self.total_rows())

    def _upsert_week(self, week: pd.Timestamp, records: pd.DataFrame, key_columns: list[str],
                     schema: pa.Schema) -> tuple[int, int]:
        """Merge one week's records into its file; (inserted, updated) row counts."""
        path = self.week_path(week)
        existing = (pq.read_table(self._arrow(path), filesystem=self._filesystem).to_pandas()
                    if path.exists() else None)
        if existing is None or existing.empty:
            merged, inserted, updated = records, len(records), 0
        else:
            incoming = records[key_columns].assign(_hash=_row_hashes(records))
            stored = existing[key_columns].assign(
                _stored_hash=pd.array(_row_hashes(existing), dtype="Int64"))
            matched = incoming.merge(stored, on=key_columns, how="left")
            seen = matched["_stored_hash"].notna().to_numpy()
            same = (matched["_stored_hash"] == matched["_hash"]).fillna(False).to_numpy(dtype=bool)
            inserted = int((~seen).sum())
            updated = int((seen & ~same).sum())
            changed = records[~same]
            if changed.empty:
                return 0, 0
            stale = existing[key_columns].merge(
                changed[key_columns].assign(_stale=True), on=key_columns, how="left"
            )["_stale"].fillna(False).to_numpy(dtype=bool)
            merged = pd.concat([existing[~stale], changed], ignore_index=True)
        merged = merged.sort_values(key_columns, kind="stable").reset_index(drop=True)
        atomic_write_bytes(path, _parquet_bytes(pa.Table.from_pandas(merged, schema=schema,
                                                                     preserve_index=False)))
        return inserted, updated

    # ---- internals -----------------------------------------------------------------

    def _schema(self) -> pa.Schema | None:
        weeks = self.weeks()
        return pq.read_schema(self._arrow_path(weeks[-1]), filesystem=self._filesystem) if weeks else None

    def _read(self, since, until, columns) -> pd.DataFrame | None:
        weeks = self.weeks()
        if not weeks:
            return None
        schema = pq.read_schema(self._arrow_path(weeks[-1]), filesystem=self._filesystem)
        layout = _layout(schema)
        keys, date_col = layout["key_columns"], layout["key_columns"][-1]
        lo = None if since is None else pd.Timestamp(since)
        hi = None if until is None else pd.Timestamp(until)
        # A week file holds dates Monday 00:00 up to (not including) the next Monday.
        chosen = [w for w in weeks
                  if (lo is None or w + pd.Timedelta(weeks=1) > lo) and (hi is None or w <= hi)]
        wanted = list(schema.names) if columns is None else list(columns)
        unknown = [c for c in wanted if c not in schema.names]
        if unknown:
            raise KeyError(f"the history has no columns {unknown}")
        read = wanted + [k for k in keys if k not in wanted]
        if not chosen:
            return schema.empty_table().select(read).to_pandas()[wanted]
        dataset = pads.dataset([self._arrow_path(w) for w in chosen], format="parquet", schema=schema,
                               filesystem=self._filesystem)
        table = dataset.to_table(columns=read, filter=_date_filter(schema, date_col, lo, hi))
        # Each file is sorted by the keys, but the weeks interleave customers: one sort
        # gives the order the single-file layout had, so models trained on it do not change.
        # The same stable sort as ``sort_by``, taken a column at a time with each source
        # column dropped once taken, then converted with ``self_destruct`` (each Arrow
        # column freed once in pandas): ``sort_by`` + ``to_pandas`` held the window read,
        # sorted and converted at once (BENCHMARKS.md, "History at scale").
        from pyarrow import compute as pc
        order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys])
        read_schema, taken = table.schema, []
        for name in read:
            taken.append(table.column(name).take(order))
            table = table.drop_columns([name])
        del order
        table = pa.Table.from_arrays(taken, schema=read_schema)
        del taken
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        if not pa.types.is_timestamp(schema.field(date_col).type) and (lo is not None or hi is not None):
            dates = pd.to_datetime(frame[date_col])
            frame = frame[((dates >= lo) if lo is not None else True)
                          & ((dates <= hi) if hi is not None else True)].reset_index(drop=True)
        return frame if read == wanted else frame[wanted]

    def _migrate_legacy(self, key_columns: list[str]) -> None:
        """Split ``customers.parquet`` into week files, then remove it (caller holds the lock).

        Re-run from the start after a crash: the old file is the truth until it is gone,
        and week files left by an interrupted migration are simply overwritten.
        """
        if not self.legacy_path.exists():
            return
        table = pq.read_table(self._arrow(self.legacy_path), filesystem=self._filesystem)
        missing = [c for c in key_columns if c not in table.column_names]
        if missing:
            raise HistoryError(f"{self.legacy_path} lacks the key columns {missing}; cannot migrate it")
        schema = _with_layout(table.schema, key_columns)
        frame = table.to_pandas()
        weeks = week_start(frame[key_columns[-1]])
        for week, index in sorted(frame.groupby(weeks.to_numpy()).indices.items()):
            part = frame.iloc[index].sort_values(key_columns, kind="stable")
            atomic_write_bytes(self.week_path(pd.Timestamp(week)), _parquet_bytes(
                pa.Table.from_pandas(part, schema=schema, preserve_index=False)))
        self.legacy_path.unlink()
        fsync_dir(self.directory)

    def _remove_stale_temporaries(self) -> None:
        # Left behind only by a writer that died mid-write; we hold the lock, so none is live.
        # (Object storage has none: a PUT is whole or absent.)
        if not self.remote and self.weeks_dir.is_dir():
            for tmp in self.weeks_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, exclusive: bool):
        """Hold ``.lock``: exclusive for a read-modify-write, shared for a read, so a reader
        never sees half an upsert and two writers never interleave. Released by the kernel
        when the process dies, so a crash never leaves it held. Object storage has no
        locks: a single writer is the deployment's job there (module docstring)."""
        if self.remote:
            yield
            return
        if not exclusive and not self.directory.is_dir():
            yield  # nothing stored yet, and a reader should not create the directory
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600 like every other file of the data directory (storage/atomic.py).
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _with_layout(schema: pa.Schema, key_columns: list[str]) -> pa.Schema:
    layout = json.dumps({"version": 1, "key_columns": list(key_columns)}).encode()
    return schema.with_metadata({**(schema.metadata or {}), LAYOUT_KEY: layout})


def _layout(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(LAYOUT_KEY)
    if raw is None:
        raise HistoryError("a week file of the history lacks its layout metadata")
    return json.loads(raw)


def _date_filter(schema: pa.Schema, column: str, lo, hi):
    """A pushdown filter on the date column (row-group statistics skip whole groups);
    dates stored as text are filtered after reading instead."""
    kind = schema.field(column).type
    if not pa.types.is_timestamp(kind):
        return None
    expr = None
    for bound, op in ((lo, "ge"), (hi, "le")):
        if bound is None:
            continue
        value = pa.scalar(bound.to_pydatetime(), type=kind)
        term = pads.field(column) >= value if op == "ge" else pads.field(column) <= value
        expr = term if expr is None else expr & term
    return expr


def _align_dtypes(records: pd.DataFrame, existing: pd.DataFrame) -> pd.DataFrame:
    out = records.copy()
    for col in existing.columns:
        if out[col].dtype != existing[col].dtype:
            try:
                out[col] = out[col].astype(existing[col].dtype)
            except (TypeError, ValueError):
                pass  # left as is; validation downstream names the column
    return out


def _row_hashes(frame: pd.DataFrame):
    # As int64 so the stored side can be a nullable Int64 after a left join (float would round).
    return pd.util.hash_pandas_object(frame, index=False).to_numpy().view("int64")


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
