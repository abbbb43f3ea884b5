"""The feature spec: which columns a churn dataset has and what they mean.

One spec drives the pandera schema, the preprocessing and the serving API, so the
columns are configuration (a JSON file), never code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from churn_assets.core.categories import as_text, category_key

BUILTIN_SPEC_DIR = Path(__file__).parent / "specs"
LABEL = "_label"  # the 0/1 churn label column; the raw target column stays as the source sent it


class SpecError(ValueError):
    """A feature spec that cannot be used, with the offending key named."""


@dataclass(frozen=True)
class FeatureSpec:
    """Columns of a customer-snapshot table and how to read them.

    Attributes:
        name: Short name, recorded with every model version.
        id_column: Customer identifier; with ``timestamp_column`` it keys a record.
        timestamp_column: Snapshot date (the "as of" date of the features).
        target_column: The churn label.
        positive_label: Value of ``target_column`` that means "churned". Compared as
            text, so ``1`` and ``"1"`` are the same label.
        negative_label: Value that means "stayed".
        numeric_features: Columns parsed as float; blank strings count as missing.
        categorical_features: Columns treated as categories; unseen values at
            prediction time are tolerated.
        category_aliases: Per categorical column, raw label -> canonical label
            (applied after stripping and case-folding), e.g. ``"cc" -> "credit card"``.
        label_horizon_days: A snapshot's label means "churned within this many days
            after the snapshot", so it is final only that many days later. 0 for
            sources whose labels are already final.
        updated_at_column: Optional column telling when the source last changed a
            record (used for incremental fetches).
        value_column: Optional numeric feature holding what a customer is worth (e.g.
            monthly spend); the risk list's ``value_at_risk`` is P(churn) times it.
        bounds: Per feature column, the values a record may hold: ``min`` and ``max``
            (numeric columns, inclusive) and ``allowed`` (a list; categories compared
            after trimming, case-folding and ``category_aliases``). Validation refuses
            a batch with any value outside them; missing values are not judged here.
            None: no bounds.
    """

    name: str
    id_column: str
    timestamp_column: str
    target_column: str
    positive_label: str
    negative_label: str
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    category_aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    label_horizon_days: int = 0
    updated_at_column: str | None = None
    value_column: str | None = None
    # None rather than an empty dict: models pickled before bounds existed read the
    # class default, and a spec without bounds keeps the dict form it always had.
    bounds: dict[str, dict] | None = None

    def __post_init__(self) -> None:
        if not self.numeric_features and not self.categorical_features:
            raise SpecError(f"spec {self.name!r}: no numeric_features and no categorical_features")
        features = list(self.numeric_features) + list(self.categorical_features)
        dupes = sorted({c for c in features if features.count(c) > 1})
        if dupes:
            raise SpecError(f"spec {self.name!r}: columns listed twice as features: {dupes}")
        reserved = {self.id_column, self.timestamp_column, self.target_column}
        clash = sorted(reserved.intersection(features))
        if clash:
            raise SpecError(
                f"spec {self.name!r}: id/timestamp/target columns used as features: {clash}"
            )
        unknown = sorted(set(self.category_aliases) - set(self.categorical_features))
        if unknown:
            raise SpecError(
                f"spec {self.name!r}: category_aliases for non-categorical columns: {unknown}"
            )
        if self.label_horizon_days < 0:
            raise SpecError(f"spec {self.name!r}: label_horizon_days must be >= 0")
        if self.value_column is not None and self.value_column not in self.numeric_features:
            raise SpecError(f"spec {self.name!r}: value_column {self.value_column!r} is not one of"
                            f" the numeric_features")
        if str(self.positive_label) == str(self.negative_label):
            raise SpecError(f"spec {self.name!r}: positive_label equals negative_label")
        for column, bound in (self.bounds or {}).items():
            self._check_bound(column, bound)

    def _check_bound(self, column: str, bound: dict) -> None:
        where = f"spec {self.name!r}: bounds.{column}"
        if column not in self.feature_columns:
            raise SpecError(f"{where}: not a feature column (bounds are for numeric_features"
                            " and categorical_features)")
        if not bound or set(bound) - {"min", "max", "allowed"}:
            raise SpecError(f"{where}: give min, max and/or allowed (and nothing else)")
        if column in self.categorical_features and ("min" in bound or "max" in bound):
            raise SpecError(f"{where}: min and max are for numeric columns; use allowed for a category")
        if bound.get("min") is not None and bound.get("max") is not None and bound["min"] > bound["max"]:
            raise SpecError(f"{where}: min ({bound['min']}) exceeds max ({bound['max']})")
        if "allowed" in bound and not bound["allowed"]:
            raise SpecError(f"{where}: allowed must list at least one value")

    def bounds_of(self, column: str) -> dict:
        """``{"min": float, "max": float, "allowed": [...]}`` (only the keys set) for ``column``."""
        return (self.bounds or {}).get(column, {})

    @property
    def feature_columns(self) -> list[str]:
        return list(self.numeric_features) + list(self.categorical_features)

    @property
    def key_columns(self) -> list[str]:
        return [self.id_column, self.timestamp_column]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["numeric_features"] = list(self.numeric_features)
        data["categorical_features"] = list(self.categorical_features)
        if not self.bounds:
            data.pop("bounds")
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "feature spec") -> FeatureSpec:
        """Build a spec from its JSON form; every unknown key, wrong type or missing key
        is a ``SpecError`` naming the key (docs/configuration.md lists them)."""
        try:
            model = SpecFile.model_validate(data)
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                key = ".".join(str(p) for p in error["loc"]) or "(top level)"
                reason = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                lines.append(f"{where}: {key}: {reason}")
            raise SpecError("\n".join(lines)) from None
        values = model.model_dump()
        values["numeric_features"] = tuple(values["numeric_features"])
        values["categorical_features"] = tuple(values["categorical_features"])
        values["category_aliases"] = {
            col: {str(k).strip().casefold(): str(v).strip().casefold() for k, v in aliases.items()}
            for col, aliases in values["category_aliases"].items()
        }
        values["bounds"] = _normalized_bounds(values["bounds"], values) or None
        return cls(**values)


def _normalized_bounds(bounds: dict, values: dict) -> dict:
    """Bounds as validation compares them: numbers as floats, categories in their
    canonical form (the category rule, then the column's aliases)."""
    out = {}
    for column, bound in bounds.items():
        bound = {k: v for k, v in bound.items() if v is not None}
        if "allowed" in bound:
            if column in values["categorical_features"]:
                aliases = values["category_aliases"].get(column, {})
                keys = (category_key(as_text(v)) for v in bound["allowed"])
                bound["allowed"] = sorted({aliases.get(k, k) for k in keys if k is not None})
            else:
                bound["allowed"] = sorted({float(v) for v in bound["allowed"]})
        for key in ("min", "max"):
            if key in bound:
                bound[key] = float(bound[key])
        out[column] = bound
    return out


class ColumnBounds(BaseModel):
    """The JSON form of one column's bounds (docs/configuration.md, "Feature spec")."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    allowed: list[str | float] | None = None


class SpecFile(BaseModel):
    """The JSON form of a feature spec (docs/configuration.md, "Feature spec")."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    id_column: str = Field(min_length=1)
    timestamp_column: str = Field(min_length=1)
    target_column: str = Field(min_length=1)
    positive_label: str
    negative_label: str
    numeric_features: list[str]
    categorical_features: list[str]
    category_aliases: dict[str, dict[str, str]] = Field(default_factory=dict)
    label_horizon_days: int = Field(0, ge=0)
    updated_at_column: str | None = None
    value_column: str | None = None
    bounds: dict[str, ColumnBounds] = Field(default_factory=dict)

    @field_validator("positive_label", "negative_label", mode="before")
    @classmethod
    def _label_as_text(cls, value):
        # 1 and "1" are the same label: the target is compared as text.
        return str(value) if isinstance(value, (int, float, bool)) else value


def load_spec(name_or_path: str) -> FeatureSpec:
    """Load a built-in spec by name (``simulator``, ``telco``) or a JSON spec file by path."""
    builtin = BUILTIN_SPEC_DIR / f"{name_or_path}.json"
    path = builtin if builtin.exists() else Path(name_or_path)
    if not path.exists():
        choices = sorted(p.stem for p in BUILTIN_SPEC_DIR.glob("*.json"))
        raise SpecError(f"no feature spec {name_or_path!r}: not a file, nor one of {choices}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"feature spec {path} is not valid JSON: {exc}") from exc
    return FeatureSpec.from_dict(data, where=f"feature spec {path}")


def churn_label(target: pd.Series, spec: FeatureSpec) -> pd.Series:
    """The 0/1 churn label of raw target values: 1 where the value reads as ``positive_label``.

    Input: the raw target column, shape (n_rows,), of any dtype. Values are read with the
    shared text rule (``categories.as_text``), so ``1``, ``1.0``, ``"1"`` and ``" 1 "``
    are one label. Output: int64 Series, same index. The one place the label is computed:
    validation, the history split and the evaluation all call it.
    """
    text = target.astype("object").map(as_text)
    return (text == spec.positive_label).astype("int64")
