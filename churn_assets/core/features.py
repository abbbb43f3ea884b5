"""Preprocessing: raw customer records -> numeric feature matrix.

Everything here is a scikit-learn transformer fitted once on the training window and
persisted with the model, so training, evaluation and serving apply the same transform.
One-hot encoding keeps the categories seen in training and maps unseen ones to all
zeros, so the column set never changes from week to week.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn_assets.core.categories import normalize_category
from churn_assets.core.spec import FeatureSpec

MISSING_CATEGORY = "__missing__"


def to_float(series: pd.Series) -> pd.Series:
    """Numbers as float64; blank strings become NaN (raises ValueError on other text)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    as_text = series.astype("object").where(series.notna(), None)
    stripped = as_text.map(lambda v: v.strip() if isinstance(v, str) else v)
    stripped = stripped.where(stripped != "", None)
    return pd.to_numeric(stripped, errors="raise").astype("float64")


def canonical_categories(values: pd.Series, aliases: dict[str, str]) -> np.ndarray:
    """``categories.normalize_category`` of every value, as an object array (n_rows,).

    Normalised once per distinct raw value, not once per row: a column of a million rows
    holds a few dozen spellings, so this costs a factorize instead of a million calls.
    Missing values are NaN, not None: SimpleImputer recognises only NaN in object columns.
    """
    codes, uniques = pd.factorize(values.astype("object"), use_na_sentinel=True)
    canonical = [normalize_category(u, aliases) for u in uniques]
    table = np.array([np.nan if c is None else c for c in canonical] + [np.nan], dtype=object)
    return table[codes]  # code -1 (missing) picks the trailing NaN


def category_counts(values: pd.Series, aliases: dict[str, str]) -> pd.Series:
    """Rows per canonical category of ``values`` (missing counted as ``MISSING_CATEGORY``):
    an int64 Series indexed by category text."""
    canonical = pd.Series(canonical_categories(values, aliases), dtype=object).fillna(MISSING_CATEGORY)
    return canonical.value_counts(sort=False)


class RecordNormalizer(TransformerMixin, BaseEstimator):
    """Select the spec's feature columns and put them in canonical form.

    Input: DataFrame of raw records, shape (n_rows, any columns that include the spec's
    features). Output: DataFrame (n_rows, n_features) with numeric columns as float64
    (NaN for missing) and categorical columns as canonical lower-case text (NaN for
    missing). ``fit`` records the column order and ``category_shares_``: per categorical
    column, the share of the fitted rows in each canonical category (``MISSING_CATEGORY``
    for missing), the training window's category mix that explanations measure against.
    ``transform`` uses neither.
    """

    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def fit(self, X: pd.DataFrame, y=None):
        self.feature_names_in_ = np.asarray(self.spec.feature_columns, dtype=object)
        self.record_category_counts({col: category_counts(X[col], self.spec.category_aliases.get(col, {}))
                                     for col in self.spec.categorical_features})
        return self

    def record_category_counts(self, counts: dict[str, pd.Series]) -> None:
        """Set ``category_shares_`` from row counts per canonical category (``category_counts``)."""
        self.category_shares_ = {col: {str(k): float(v) / max(float(c.sum()), 1.0) for k, v in c.items()}
                                 for col, c in counts.items()}

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        spec = self.spec
        missing = [c for c in spec.feature_columns if c not in X.columns]
        if missing:
            raise KeyError(f"records lack feature columns {missing}")
        out = {}
        for col in spec.numeric_features:
            out[col] = to_float(X[col]).to_numpy()
        for col in spec.categorical_features:
            out[col] = canonical_categories(X[col], spec.category_aliases.get(col, {}))
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.spec.feature_columns, dtype=object)


def build_preprocessor(spec: FeatureSpec) -> Pipeline:
    """Unfitted preprocessing: normalize -> impute -> one-hot / scale.

    Output of the fitted pipeline: float64 array (n_rows, n_encoded_features), dense.
    Numeric columns are median-imputed with a missing-indicator column each and
    standardised (mean 0, unit variance on the training window); categorical columns
    get a "__missing__" category and a one-hot block that ignores unseen values.
    """
    numeric = Pipeline([
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
    ])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)),
    ])
    columns = ColumnTransformer(
        [("numeric", numeric, list(spec.numeric_features)),
         ("categorical", categorical, list(spec.categorical_features))],
        remainder="drop",
        verbose_feature_names_out=True,
    )
    return Pipeline([("normalize", RecordNormalizer(spec)), ("columns", columns)])
