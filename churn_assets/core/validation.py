"""Validate raw customer records against the feature spec with pandera.

The schema is a pandera ``DataFrameModel`` generated from the spec, so adding a feature
to the spec is all it takes to validate it. Failures are collected lazily and reported
together, each naming its column and check.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from churn_assets.core.categories import as_text, normalize_category
from churn_assets.core.features import to_float
from churn_assets.core.frame_pickle import round_trips_as_parquet
from churn_assets.core.spec import LABEL, FeatureSpec, churn_label


# Rows per validation chunk (whole snapshot weeks; a larger week is one chunk): the
# chunk, not the batch, bounds the memory of validation (BENCHMARKS.md, "History at scale").
CHUNK_ROWS = 1_000_000
# A default-chunked batch of up to this many chunks' rows is validated in one frame: the
# chunked path validated every row twice then (all chunks before the first is stored),
# which at 1 M rows cost more time (3.5 -> 5.9 s) than the memory it saved (1.40 -> 1.28 GiB).
ONE_FRAME_CHUNKS = 3


class RecordValidationError(ValueError):
    """Records that do not match the feature spec; ``failure_cases`` has one row per failure."""

    def __init__(self, message: str, failure_cases: pd.DataFrame):
        super().__init__(message)
        self.failure_cases = failure_cases


def _not_all_missing(series: pd.Series) -> bool:
    return bool(series.notna().any())


def _finite(series: pd.Series) -> pd.Series:
    return ~np.isinf(series.astype("float64")) | series.isna()


def _allowed_category(series: pd.Series, allowed, aliases: dict) -> pd.Series:
    """True where a value's canonical category is ``allowed`` (missing values pass)."""
    canonical = series.map(lambda v: normalize_category(v, aliases), na_action="ignore")
    return canonical.isin(set(allowed)) | series.isna()


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
        bound = spec.bounds_of(column)
        limits = {name: bound[key] for key, name in (("min", "ge"), ("max", "le"), ("allowed", "isin"))
                  if key in bound}
        add(column, pa.typing.Series[np.float64], nullable=True,
            not_all_missing=(), finite=(), **limits)
    for column in spec.categorical_features:
        allowed = spec.bounds_of(column).get("allowed")
        # Judged in canonical form, as the model will read them ("Basic " is "basic").
        extra = {"allowed_category": {"allowed": tuple(allowed),
                                      "aliases": tuple(sorted(spec.category_aliases.get(column, {}).items()))}
                 } if allowed else {}
        add(column, pa.typing.Series[object], nullable=True, not_all_missing=(), **extra)

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

    @pa.extensions.register_check_method(statistics=["allowed", "aliases"])
    def allowed_category(pandas_obj, *, allowed, aliases):
        return _allowed_category(pandas_obj, allowed, dict(aliases))

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
    if ts in out.columns:
        out[ts] = coerce_timestamps(out[ts])
    for column in [spec.target_column, spec.id_column, *spec.categorical_features]:
        if column in out.columns:
            out[column] = _as_text(out[column])
    return out


def coerce_timestamps(values: pd.Series) -> pd.Series:
    """Snapshot dates as naive UTC ``datetime64[ns]`` if every value parses; else unchanged
    (pandera then names the column)."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        try:
            values = pd.to_datetime(values, utc=False, format="mixed")
        except (ValueError, TypeError):
            return values
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(values):
        values = values.astype("datetime64[ns]")
    return values


def _as_text(series: pd.Series) -> pd.Series:
    """Values as Python str (NaN kept for missing), by the shared ``categories.as_text`` rule."""
    if isinstance(series.dtype, pd.StringDtype):
        # Equal strings have equal text, so convert each distinct value once and share
        # the objects: a str object per row was most of the memory and time of validating
        # a large batch. Not for object columns: there 1, 1.0 and True hash alike but
        # read "1", "1" and "True".
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        texts = [np.nan if (t := as_text(u)) is None else t for u in uniques]
        table = np.array([*texts, np.nan], dtype=object)  # code -1 (missing) picks NaN
        return pd.Series(table[codes], index=series.index, name=series.name, dtype="object")
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


def validated_chunks(records: pd.DataFrame, spec: FeatureSpec, chunk_rows: int | None = None,
                     spill_dir: str | Path | None = None) -> Iterator[tuple[pd.DataFrame, bool]]:
    """``validate_records`` of the batch, yielded in chunks of whole snapshot weeks
    (oldest first, about ``chunk_rows`` rows each, default ``CHUNK_ROWS``) as
    ``(validated chunk, is_last)``. With the default, a batch of at most
    ``ONE_FRAME_CHUNKS`` chunks is one chunk.

    Validating a large batch in one frame holds every text value as a Python object at
    once (13.7 GiB for 15.6 M rows, BENCHMARKS.md "History at scale"); a chunk bounds
    that by its size. All or nothing, as before: every chunk is checked before the first
    is yielded, so a caller that stores each chunk as it comes stores nothing from a
    batch with a bad row. Each validated chunk waits in a temporary Parquet file
    (``spill_dir``, default the system's temporary directory) until it is yielded:
    keeping them in memory would cost what chunking saves, validating them twice cost
    1.2-1.9x the time. A chunk that cannot be spilled exactly (an object column, a full
    disk) is validated again instead.

    Chunks give exactly the one-shot result: a key (customer, date) lies in one week, so
    the uniqueness check sees all its rows; the other checks judge rows one by one, or ask
    whether a column has any value at all, which a chunk passing implies for the batch.
    The week of a row is taken from its parsed date, parsed once for the whole batch as
    the one-shot check would. When a chunk fails, or the dates do not parse, the whole
    batch is validated in one frame instead, so the error (or, if the batch as a whole
    passes, e.g. a column empty in one week only, the result) is the one-shot's exactly;
    only failing batches pay its memory.
    """
    if chunk_rows is None and len(records) <= ONE_FRAME_CHUNKS * CHUNK_ROWS:
        yield validate_records(records, spec), True
        return
    chunks, timestamps = _week_chunks(records, spec, CHUNK_ROWS if chunk_rows is None else chunk_rows)
    if chunks is None:
        yield validate_records(records, spec), True
        return
    first_dtypes = None
    try:
        spill = tempfile.TemporaryDirectory(prefix="churn-validated-", dir=spill_dir)
    except OSError:  # no writable temporary directory: every chunk is validated again
        spill = None
    try:
        spilled: list[Path | None] = []
        for index, positions in enumerate(chunks):
            try:
                valid = validate_records(_chunk(records, timestamps, positions, spec), spec)
            except RecordValidationError:
                yield validate_records(records, spec), True  # raises the one-shot's error
                return
            if first_dtypes is None:
                first_dtypes = valid.dtypes
            elif not valid.dtypes.equals(first_dtypes):  # cannot happen for slices of one frame;
                yield validate_records(records, spec), True  # if it does, trust the one-shot
                return
            spilled.append(_spill(valid, Path(spill.name) / f"{index}.parquet") if spill else None)
            del valid
        for index, (positions, path) in enumerate(zip(chunks, spilled)):
            valid = _unspill(path, first_dtypes)
            if valid is None:
                valid = validate_records(_chunk(records, timestamps, positions, spec), spec)
            yield valid, index == len(chunks) - 1
    finally:  # also when the caller stops early (a failed upsert closes the generator)
        if spill is not None:
            spill.cleanup()


def _spill(valid: pd.DataFrame, path: Path) -> Path | None:
    """``valid`` written to ``path`` as Parquet, or None where Parquet might not give it
    back unchanged or the write failed."""
    if not round_trips_as_parquet(valid):
        return None
    try:
        pq.write_table(pyarrow.Table.from_pandas(valid), path)
    except OSError:  # a full or read-only temporary directory: validate the chunk again
        path.unlink(missing_ok=True)
        return None
    return path


def _unspill(path: Path | None, dtypes: pd.Series) -> pd.DataFrame | None:
    """The chunk ``_spill`` wrote, or None if there is none or it did not come back with
    the validated dtypes."""
    if path is None:
        return None
    try:
        frame = pq.read_table(path).to_pandas()
    except OSError:
        return None
    finally:
        path.unlink(missing_ok=True)  # its rows are in memory now; free the disk early
    return frame if frame.dtypes.equals(dtypes) else None


def _week_chunks(records: pd.DataFrame, spec: FeatureSpec,
                 chunk_rows: int) -> tuple[list[np.ndarray] | None, pd.Series | None]:
    """Row positions (in batch order) of each chunk of whole weeks, and the parsed dates;
    (None, None) for one chunk."""
    ts = spec.timestamp_column
    if len(records) <= chunk_rows or ts not in records.columns:
        return None, None
    timestamps = coerce_timestamps(records[ts])
    if not pd.api.types.is_datetime64_any_dtype(timestamps) or timestamps.isna().any():
        return None, None  # the one-shot check names the column
    weeks = timestamps.dt.normalize() - pd.to_timedelta(timestamps.dt.day_of_week, unit="D")
    groups = sorted(pd.Series(np.arange(len(records))).groupby(weeks.to_numpy()).indices.items())
    chunks, current, size = [], [], 0
    for _, positions in groups:
        if current and size + len(positions) > chunk_rows:
            chunks.append(np.sort(np.concatenate(current)))
            current, size = [], 0
        current.append(positions)
        size += len(positions)
    chunks.append(np.sort(np.concatenate(current)))
    return (chunks, timestamps) if len(chunks) > 1 else (None, None)


def _chunk(records: pd.DataFrame, timestamps: pd.Series, positions: np.ndarray,
           spec: FeatureSpec) -> pd.DataFrame:
    # The batch's parsed dates, so a chunk's dates are judged as the whole column's are.
    part = records.iloc[positions]
    return part.assign(**{spec.timestamp_column: timestamps.iloc[positions].to_numpy()})


def _bound_words(check: str, bound: dict) -> str:
    """A bounds check as the spec states it, not as pandera spells it."""
    if check.startswith("greater_than_or_equal_to("):
        return f"its bounds (min {bound['min']:g})"
    if check.startswith("less_than_or_equal_to("):
        return f"its bounds (max {bound['max']:g})"
    if check.startswith(("isin(", "allowed_category(")):
        shown = (f"{v:g}" if isinstance(v, float) else str(v) for v in bound["allowed"])
        return f"its bounds (allowed: {', '.join(shown)})"
    return check


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
        elif isinstance(column, str) and spec.bounds_of(column):
            check = _bound_words(check, spec.bounds_of(column))
        where = f"column {column!r}" if isinstance(column, str) and column in set(cases["column"]) else "table"
        lines.append(f"{where} failed {check}: {len(group)} row(s), e.g. {examples}")
    return f"records do not match the {spec.name!r} feature spec:\n  " + "\n  ".join(lines)
