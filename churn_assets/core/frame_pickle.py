"""Frames pickled as Parquet: how step outputs holding big frames cross between steps.

Dagster's io managers pickle step outputs with protocol 4, which copies every column
into a bytes object and holds them all until the dump ends: the raw batch of a 10 M-row
window (4.9 GiB) peaked at 8.0 GiB in ``raw_customers``, and ``clean_features``' training
frames (2.1 GiB) took a 10 M-row refresh through Dagster to 8.1 GiB (BENCHMARKS.md,
"History at scale"). As Parquet the copy is the compressed size, a seventh to a tenth.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def round_trips_as_parquet(frame: pd.DataFrame) -> bool:
    """Whether Parquet gives ``frame`` back unchanged: not when it is empty, has object
    columns (they may mix 1 and "1"), or has non-string column names."""
    return not (frame.empty or any(d == object for d in frame.dtypes)
                or not all(isinstance(c, str) for c in frame.columns))


def parquet_bytes(frame: pd.DataFrame) -> bytes | None:
    """``frame`` as Parquet, or None when Parquet would not give it back unchanged."""
    if not round_trips_as_parquet(frame):
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame), sink)
    return sink.getvalue().to_pybytes()


def frame_from_parquet(data: bytes) -> pd.DataFrame:
    """The frame ``parquet_bytes`` packed (its index included)."""
    return pq.read_table(pa.py_buffer(data)).to_pandas()
