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

from churn_assets.core.features import build_preprocessor
from churn_assets.core.spec import FeatureSpec

# Rows transformed at once. 500,000 rows x 29 encoded columns: ~0.1 GiB per float64 block,
# a few such blocks alive at a time; larger chunks measured no faster.
ENCODE_CHUNK_ROWS = 500_000


def row_chunks(frames: Sequence[pd.DataFrame], keep: Sequence[np.ndarray | None] | None = None,
               chunk_rows: int = ENCODE_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The rows of ``frames`` in order, at most ``chunk_rows`` per piece (before masking).

    ``keep``: one boolean array (or None: all rows) per frame, selecting its rows.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    for i, frame in enumerate(frames):
        mask = keep[i] if keep is not None else None
        for lo in range(0, len(frame), chunk_rows):
            chunk = frame.iloc[lo:lo + chunk_rows]
            if mask is not None:
                chunk = chunk[mask[lo:lo + chunk_rows]]
            if len(chunk):
                yield chunk


def _kept_rows(frames, keep) -> int:
    if keep is None:
        return sum(len(f) for f in frames)
    return sum(len(f) if m is None else int(np.count_nonzero(m)) for f, m in zip(frames, keep))


def fit_preprocessor(spec: FeatureSpec, frames: Sequence[pd.DataFrame],
                     chunk_rows: int = ENCODE_CHUNK_ROWS) -> Pipeline:
    """``build_preprocessor(spec)`` fitted on the rows of ``frames`` as if concatenated.

    Equal to ``build_preprocessor(spec).fit(pd.concat(frames))``: the same medians,
    missing indicators and categories, and the same scaling statistics up to float
    rounding (exactly the same when the rows fit in one chunk). The median imputer is
    fitted on the window's numeric columns (a median needs every value); the scaler
    accumulates its mean and variance over chunks (``StandardScaler.partial_fit``); the
    one-hot encoder sees each column's distinct values. The ColumnTransformer is fitted on
    a frame of those distinct values, which gives it the same output layout, and then
    holds the sub-pipelines fitted on every row.
    """
    preprocessor = build_preprocessor(spec)
    normalizer = preprocessor.named_steps["normalize"].fit(None)
    columns = preprocessor.named_steps["columns"]
    numeric_cols, categorical_cols = list(spec.numeric_features), list(spec.categorical_features)
    n_rows = _kept_rows(frames, None)
    if n_rows == 0:
        raise ValueError("no rows to fit the preprocessing on")
    # Column-major like the frame's own block, so the scaler sums in the same order as
    # ColumnTransformer.fit would and one chunk gives bit-identical statistics.
    numeric_values = np.empty((n_rows, len(numeric_cols)), dtype=np.float64, order="F")
    distinct: dict[str, list[np.ndarray]] = {col: [] for col in categorical_cols}
    at = 0
    for chunk in row_chunks(frames, chunk_rows=chunk_rows):
        normal = normalizer.transform(chunk)
        numeric_values[at:at + len(chunk)] = normal[numeric_cols].to_numpy(dtype=np.float64)
        at += len(chunk)
        for col in categorical_cols:
            distinct[col].append(pd.unique(normal[col].to_numpy()))

    numeric = clone(dict((name, est) for name, est, _ in columns.transformers)["numeric"])
    numeric_frame = pd.DataFrame(numeric_values, columns=numeric_cols, copy=False)
    impute = numeric.named_steps["impute"].fit(numeric_frame)
    scale: StandardScaler = numeric.named_steps["scale"]
    for lo in range(0, n_rows, chunk_rows):
        scale.partial_fit(impute.transform(numeric_frame.iloc[lo:lo + chunk_rows]))
    has_missing = np.isnan(numeric_values).any(axis=0)
    del numeric_frame, numeric_values

    values = {col: pd.unique(np.concatenate(parts)) for col, parts in distinct.items()}
    length = max([2, *(len(v) for v in values.values())])
    layout = {col: np.resize(vals, length) for col, vals in values.items()}
    for col, missing in zip(numeric_cols, has_missing):
        layout[col] = np.where(np.arange(length) == 0, np.nan if missing else 0.0, 0.0)
    layout_frame = pd.DataFrame(layout)[list(spec.feature_columns)]
    # Fitted on the distinct values, the ColumnTransformer gets the output layout (slices,
    # feature names) and the one-hot categories of the whole window; then it is given the
    # numeric pipeline fitted on every row. transformers_ is the documented list of fitted
    # (name, transformer, columns) tuples.
    columns.fit(layout_frame)
    layout_names = list(columns.get_feature_names_out())
    columns.transformers_ = [(name, numeric if name == "numeric" else est, cols)
                             for name, est, cols in columns.transformers_]
    if list(columns.get_feature_names_out()) != layout_names:
        raise RuntimeError("chunked preprocessing fit produced a different feature layout")
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
