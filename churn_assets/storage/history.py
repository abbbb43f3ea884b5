"""The durable customer history: every snapshot ever collected, keyed by customer and date.

Writes are atomic (write a temporary file, fsync, rename), so a crash mid-write leaves
the previous history in place; the source watermark is written only after the records
it covers are on disk, so a crash between the two re-fetches rather than loses data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from churn_assets.storage.atomic import atomic_write_bytes, atomic_write_json


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


class CustomerHistory:
    """Customer snapshots in one Parquet file, upserted by (id, snapshot timestamp)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "customers.parquet"
        self.state_path = self.directory / "state.json"

    def load(self) -> pd.DataFrame | None:
        if not self.path.exists():
            return None
        return pd.read_parquet(self.path)

    def state(self) -> dict:
        if not self.state_path.exists():
            return {}
        return json.loads(self.state_path.read_text())

    def upsert(self, records: pd.DataFrame, key_columns: list[str],
               state: dict | None = None) -> UpsertSummary:
        """Merge ``records`` into the history; a key seen before is replaced, never duplicated.

        ``state`` (e.g. the source watermark) is written only after the history itself.
        """
        missing = [c for c in key_columns if c not in records.columns]
        if missing:
            raise ValueError(f"records lack the key columns {missing}")
        records = records.drop_duplicates(subset=key_columns, keep="last").reset_index(drop=True)
        existing = self.load()
        if existing is None or existing.empty:
            merged, inserted, updated = records, len(records), 0
        else:
            extra = [c for c in records.columns if c not in existing.columns]
            if extra:
                raise ValueError(f"new records bring columns the history does not have: {extra}")
            records = records.reindex(columns=existing.columns)
            records = _align_dtypes(records, existing)
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
                merged = existing
            else:
                stale = existing[key_columns].merge(
                    changed[key_columns].assign(_stale=True), on=key_columns, how="left"
                )["_stale"].fillna(False).to_numpy(dtype=bool)
                merged = pd.concat([existing[~stale], changed], ignore_index=True)
        unchanged = len(records) - inserted - updated
        if inserted or updated or existing is None:
            merged = merged.sort_values(key_columns, kind="stable").reset_index(drop=True)
            atomic_write_bytes(self.path, _to_parquet_bytes(merged))
        if state is not None:
            atomic_write_json(self.state_path, state)
        return UpsertSummary(len(records), inserted, updated, unchanged, len(merged))


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


def _to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()
