"""Validate raw customer records against the feature spec with pandera.

The schema is a pandera ``DataFrameModel`` generated from the spec, so adding a feature
to the spec is all it takes to validate it. Failures are collected lazily and reported
together, each naming its column and check.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from churn_assets.core.categories import as_text
from churn_assets.core.features import to_float
from churn_assets.core.spec import LABEL, FeatureSpec, churn_label


class RecordValidationError(ValueError):
    """Records that do not match the feature spec; ``failure_cases`` has one row per failure."""

    def __init__(self, message: str, failure_cases: pd.DataFrame):
        super().__init__(message)
        self.failure_cases = failure_cases


def _not_all_missing(series: pd.Series) -> bool:
    return bool(series.notna().any())


def _finite(series: pd.Series) -> pd.Series:
    return ~np.isinf(series.astype("float64")) | series.isna()


def schema_model(spec: FeatureSpec) -> type[pa.DataFrameModel]:
    """A pandera DataFrameModel for records of ``spec`` (after ``coerce_records``)."""
    annotations: dict[str, object] = {}
    fields: dict[str, object] = {}
    used: set[str] = set()

    def add(column: str, dtype, **kwargs) -> None:
        attr = re.sub(r"\W", "_", column)
        if not attr.isidentifier() or attr in used or attr.startswith("_"):
            attr = f"col_{len(used)}"
        used.add(attr)
        annotations[attr] = dtype
        fields[attr] = pa.Field(alias=column, **kwargs)

    labels = [spec.positive_label, spec.negative_label]
    add(spec.id_column, pa.typing.Series[object], nullable=False, coerce=False)
    add(spec.timestamp_column, pa.typing.Series["datetime64[ns]"], nullable=False)
    add(spec.target_column, pa.typing.Series[object], nullable=False, isin=labels)
    for column in spec.numeric_features:
        add(column, pa.typing.Series[np.float64], nullable=True,
            not_all_missing=(), finite=())
    for column in spec.categorical_features:
        add(column, pa.typing.Series[object], nullable=True, not_all_missing=())

    class Config:
        unique = spec.key_columns
        strict = False
        name = f"{spec.name} customer records"

    namespace = {"__annotations__": annotations, "Config": Config, **fields}
    return type(f"{spec.name.title().replace('_', '')}Records", (pa.DataFrameModel,), namespace)


# Registered once: custom field checks used by the generated models.
if not hasattr(pa.extensions, "_churn_checks_registered"):
    @pa.extensions.register_check_method(statistics=[])
    def not_all_missing(pandas_obj):  # noqa: D401 - pandera check
        return _not_all_missing(pandas_obj)

    @pa.extensions.register_check_method(statistics=[])
    def finite(pandas_obj):
        return _finite(pandas_obj)

    pa.extensions._churn_checks_registered = True


def coerce_records(records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Parse what can be parsed without guessing, so pandera judges the rest.

    Numeric columns: blank strings -> NaN, numeric text -> float; a column with other
    text is left as it is and fails the float64 dtype check by name. Timestamps: parsed
    if every value parses. Target and id: compared as text, so 1 and "1" agree.
    """
    # A fresh index: pandera's failure report cannot reshape a duplicated one.
    out = records.reset_index(drop=True)
    for column in spec.numeric_features:
        if column in out.columns:
            try:
                out[column] = to_float(out[column])
            except (ValueError, TypeError):
                pass
    ts = spec.timestamp_column
    if ts in out.columns and not pd.api.types.is_datetime64_any_dtype(out[ts]):
        try:
            out[ts] = pd.to_datetime(out[ts], utc=False, format="mixed")
        except (ValueError, TypeError):
            pass
    if ts in out.columns and isinstance(out[ts].dtype, pd.DatetimeTZDtype):
        out[ts] = out[ts].dt.tz_convert("UTC").dt.tz_localize(None)
    if ts in out.columns and pd.api.types.is_datetime64_any_dtype(out[ts]):
        out[ts] = out[ts].astype("datetime64[ns]")
    for column in [spec.target_column, spec.id_column, *spec.categorical_features]:
        if column in out.columns:
            out[column] = _as_text(out[column])
    return out


def _as_text(series: pd.Series) -> pd.Series:
    """Values as Python str (NaN kept for missing), by the shared ``categories.as_text`` rule."""
    return series.astype("object").map(lambda v: np.nan if (t := as_text(v)) is None else t).astype("object")


def validate_records(records: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Validated records with a 0/1 ``_label`` column added.

    Raises ``RecordValidationError`` naming every failing column and check.
    """
    coerced = coerce_records(records, spec)
    model = schema_model(spec)
    try:
        valid = model.validate(coerced, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases.copy()
        raise RecordValidationError(describe_failures(cases, spec), cases) from None
    # pandas' Arrow-backed strings: a third of the memory of Python str objects, and
    # they pickle between Dagster steps in milliseconds instead of seconds.
    text_columns = [c for c in valid.columns if valid[c].dtype == object]
    valid = valid.astype({c: "str" for c in text_columns})
    valid[LABEL] = churn_label(valid[spec.target_column], spec)
    return valid


def describe_failures(cases: pd.DataFrame, spec: FeatureSpec) -> str:
    """One line per failing (column, check), with a few failing values."""
    lines = []
    missing = cases[cases["check"] == "column_in_dataframe"]["failure_case"].tolist()
    for column in missing:
        lines.append(f"column {column!r} is missing")
    rest = cases[cases["check"] != "column_in_dataframe"]
    wrong_dtype = set(rest[rest["check"].astype(str).str.startswith("dtype(")]["column"])
    for (column, check), group in rest.groupby(["column", "check"], dropna=False, sort=True):
        if column in wrong_dtype and not str(check).startswith("dtype("):
            continue  # value checks on a column of the wrong type only repeat the dtype error
        examples = ", ".join(repr(v) for v in group["failure_case"].drop_duplicates().head(3))
        check = str(check)
        if check.startswith("dtype("):
            check = f"dtype check (expected {check[7:-2]})"
        elif check == "not_nullable":
            check = "not_nullable (missing values)"
        where = f"column {column!r}" if isinstance(column, str) and column in set(cases["column"]) else "table"
        lines.append(f"{where} failed {check}: {len(group)} row(s), e.g. {examples}")
    return f"records do not match the {spec.name!r} feature spec:\n  " + "\n  ".join(lines)
