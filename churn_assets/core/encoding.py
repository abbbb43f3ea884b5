"""Fitting and applying the preprocessing a chunk of rows at a time.

``build_preprocessor(spec).fit(window)`` and ``Pipeline.fit(window)`` each hold the whole
window several times over: the concatenated frame, its normalized copy, every
ColumnTransformer block (imputed numerics, indicators, their scaled copy, the dense
one-hot block) and the stacked float64 matrix. At a 10 M-row window that peaked at
11-14 GiB (BENCHMARKS.md, "Big windows"). The functions here produce the same fitted
preprocessor and the same feature matrix while holding, beyond their result, only one
chunk's intermediates and the window's numeric columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from churn_assets.core.features import MISSING_CATEGORY, build_preprocessor, category_counts, to_float
from churn_assets.core.spec import FeatureSpec

# Rows transformed at once. 500,000 rows x 29 encoded columns: ~0.1 GiB per float64 block,
# a few such blocks alive at a time; larger chunks measured no faster.
ENCODE_CHUNK_ROWS = 500_000


def row_chunks(frames: Sequence[pd.DataFrame], keep: Sequence[np.ndarray | None] | None = None,
               chunk_rows: int = ENCODE_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The rows of ``frames`` in order, ``chunk_rows`` at a time (counted before masking),
    a chunk spanning frame boundaries: rows that fit one chunk are handled at once.

    ``keep``: one boolean array (or None: all rows) per frame, selecting its rows.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    pending, size = [], 0
    for i, frame in enumerate(frames):
        mask = keep[i] if keep is not None else None
        lo = 0
        while lo < len(frame):
            take = min(chunk_rows - size, len(frame) - lo)
            piece = frame.iloc[lo:lo + take]
            pending.append(piece if mask is None else piece[mask[lo:lo + take]])
            size, lo = size + take, lo + take
            if size == chunk_rows:
                yield from _joined(pending)
                pending, size = [], 0
    yield from _joined(pending)


def _joined(pieces: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    pieces = [p for p in pieces if len(p)]
    if pieces:
        yield pieces[0] if len(pieces) == 1 else pd.concat(pieces)


def _kept_rows(frames, keep) -> int:
    if keep is None:
        return sum(len(f) for f in frames)
    return sum(len(f) if m is None else int(np.count_nonzero(m)) for f, m in zip(frames, keep))


def _numeric_block(chunk: pd.DataFrame, numeric_cols: list[str]) -> pd.DataFrame:
    # Built as RecordNormalizer builds it (one float block, column-major), so the scaler
    # sums in the order ColumnTransformer.fit would: one chunk gives bit-identical statistics.
    return pd.DataFrame({col: to_float(chunk[col]).to_numpy() for col in numeric_cols}, index=chunk.index)


def fit_preprocessor(spec: FeatureSpec, frames: Sequence[pd.DataFrame],
                     chunk_rows: int = ENCODE_CHUNK_ROWS) -> Pipeline:
    """``build_preprocessor(spec)`` fitted on the rows of ``frames`` as if concatenated.

    Equal to ``build_preprocessor(spec).fit(pd.concat(frames))``: the same medians,
    missing indicators and categories, and the same scaling statistics up to float
    rounding (bit-identical when the rows fit in one chunk). One column at a time, it
    takes each numeric column's median and whether it has missing values, and each
    categorical column's distinct canonical values. The ColumnTransformer is fitted on a
    small frame of exactly those values, which gives it the output layout (indicator
    columns, one-hot categories) of the whole window; its imputer is then given the
    window's medians, and its scaler the mean and variance of every imputed row,
    accumulated over chunks (``StandardScaler.partial_fit``).
    """
    preprocessor = build_preprocessor(spec)
    columns = preprocessor.named_steps["columns"]
    numeric_cols, categorical_cols = list(spec.numeric_features), list(spec.categorical_features)
    if _kept_rows(frames, None) == 0:
        raise ValueError("no rows to fit the preprocessing on")
    medians, has_missing = [], []
    for col in numeric_cols:
        values = np.concatenate([to_float(f[col]).to_numpy() for f in frames])
        present = values[~np.isnan(values)]
        has_missing.append(len(present) < len(values))
        # SimpleImputer(strategy="median", keep_empty_features=True): 0 for an empty column.
        medians.append(float(np.median(present)) if len(present) else 0.0)
        del values, present
    distinct, counts = {}, {}
    for col in categorical_cols:
        aliases = spec.category_aliases.get(col, {})
        # Counted, not only listed: the category mix is the reference of explanations.
        counted = pd.concat([category_counts(f[col], aliases) for f in frames])
        counts[col] = counted.groupby(level=0, sort=False).sum()
        distinct[col] = np.array([np.nan if c == MISSING_CATEGORY else c for c in counts[col].index], dtype=object)
    preprocessor.named_steps["normalize"].record_category_counts(counts)

    length = max([2, *(len(v) for v in distinct.values())])
    layout = {col: np.resize(vals, length) for col, vals in distinct.items()}
    for col, missing in zip(numeric_cols, has_missing):
        layout[col] = np.where(np.arange(length) == 0, np.nan if missing else 0.0, 0.0)
    # Fitted on this layout, the ColumnTransformer gets the window's output slices,
    # feature names, indicator columns and one-hot categories; its numeric pipeline's
    # statistics are then the window's. statistics_ and the pipeline's steps are
    # documented attributes.
    columns.fit(pd.DataFrame(layout)[list(spec.feature_columns)])
    numeric = columns.named_transformers_["numeric"]
    impute = numeric.named_steps["impute"]
    impute.statistics_ = np.asarray(medians, dtype=np.float64)
    scale: StandardScaler = clone(numeric.named_steps["scale"])
    for chunk in row_chunks(frames, chunk_rows=chunk_rows):
        scale.partial_fit(impute.transform(_numeric_block(chunk, numeric_cols)))
    numeric.set_params(scale=scale)
    return preprocessor


def encode_rows(preprocessor: Pipeline, frames: Sequence[pd.DataFrame],
                keep: Sequence[np.ndarray | None] | None = None,
                chunk_rows: int = ENCODE_CHUNK_ROWS) -> np.ndarray:
    """``preprocessor.transform`` of the rows of ``frames`` stacked (those ``keep``
    selects): float64, C-ordered, shape (kept rows, encoded features).

    The same values as transforming the concatenation at once (every step is row-wise),
    built chunk by chunk into one preallocated matrix.
    """
    width = len(preprocessor.get_feature_names_out())
    encoded = np.empty((_kept_rows(frames, keep), width), dtype=np.float64)
    at = 0
    for chunk in row_chunks(frames, keep, chunk_rows):
        encoded[at:at + len(chunk)] = preprocessor.transform(chunk)
        at += len(chunk)
    return encoded
