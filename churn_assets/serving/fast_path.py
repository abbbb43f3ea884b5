"""The fast path: a fitted ChurnPredictor compiled into plain arrays, scored without pandas.

Feeding a one-row DataFrame through the ColumnTransformer costs milliseconds; the
arithmetic itself costs microseconds. ``CompiledChurnModel`` reads the fitted
parameters out of the predictor once per loaded version (imputer fill values, missing
indicators, scaler mean/scale, one-hot category positions with the spec's aliases
folded in, then the classifier) and repeats exactly the operations scikit-learn does:

- numeric: NaN -> training median, a 0/1 indicator per column that was missing in
  training, then ``(x - mean) / scale`` on both (same IEEE operations as StandardScaler);
- categorical: strip + casefold + alias (``categories.normalize_category``), blank or
  missing -> ``"__missing__"``, then the one-hot position; unseen values -> all zeros;
- LogisticRegression: ``expit(x . coef + intercept)``;
- HistGradientBoostingClassifier: all trees walked at once, level by level, with NumPy
  (one row); batches are binned and scored by leaf tables (``leaf_tables.py``), or by
  scikit-learn's own compiled walk when a tree has more than 64 leaves;
- a calibrated predictor (``ChurnPredictor.calibrator``) takes the classifier's decision
  value instead (``x . coef + intercept``, or the boosted raw score) and maps it as
  the calibrator does: sigmoid = ``expit(a * f + b)`` (the calibrating
  LogisticRegression's coefficient and intercept), isotonic = ``np.interp`` over the
  fitted thresholds after clipping to the fitted range (IsotonicRegression with
  ``out_of_bounds="clip"``).

Only the summation order differs from scikit-learn's, so probabilities agree to about
1e-15; the serving tests hold every row to 1e-9. A predictor whose pipeline is built
differently (another encoder setting, another family) raises ``Uncompilable``; the
model store then serves it through the slow pandas pipeline rather than guess.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.categories import as_text, category_key
from churn_assets.core.features import MISSING_CATEGORY, to_float
from churn_assets.serving.scorers import ForestScorer, LinearScorer, Uncompilable, compile_calibrator

__all__ = ["CompiledChurnModel", "EncodedRecords", "Uncompilable", "batch_scorer"]


@dataclass(frozen=True)
class EncodedRecords:
    """Checked records as the fast path takes them, column by column.

    ``numeric``: float64 (n_rows, n_numeric), NaN where missing. ``categories``: one list
    (or pandas Series) per categorical feature (spec order) of the raw texts, None where
    missing. ``codes``, when the reader has factorized the categories already (the
    column-wise batch reading, ``batch_decode``): per categorical feature, each row's
    code (-1: missing) into a list of the distinct raw texts (None: missing too).
    """

    numeric: np.ndarray
    categories: list[list[str | None] | pd.Series]
    codes: list[tuple[np.ndarray, list[str | None]]] | None = None

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def row(self, i: int) -> tuple[list[float], list[str | None]]:
        return self.numeric[i].tolist(), [column[i] for column in self.categories]


def _category_table(categories: np.ndarray, aliases: dict[str, str], offset: int) -> dict[str, int]:
    """Normalized text -> encoded column, aliases resolved the way ``categories.normalize_category`` does."""
    position = {str(c): offset + i for i, c in enumerate(categories)}
    table = dict(position)
    for raw, canonical in aliases.items():
        table.pop(raw, None)  # an alias shadows a category of the same spelling
        if canonical in position:
            table[raw] = position[canonical]
    return table


class CompiledChurnModel:
    """A ChurnPredictor's preprocessing and classifier as arrays; immutable once built."""

    def __init__(self, predictor: ChurnPredictor) -> None:
        spec = predictor.spec
        self.numeric_features = tuple(spec.numeric_features)
        self.categorical_features = tuple(spec.categorical_features)
        self.threshold = float(predictor.threshold)
        columns = predictor.preprocessor.named_steps["columns"]
        names = {name for name, _, _ in columns.transformers_} - {"remainder"}
        if not names <= {"numeric", "categorical"}:
            raise Uncompilable(f"unexpected column transformers {sorted(names)}")
        n_num = len(self.numeric_features)
        self.n_numeric = n_num
        self.n_encoded = max(s.stop for s in columns.output_indices_.values())
        if n_num:
            numeric = columns.named_transformers_["numeric"]
            imputer, scaler = numeric.named_steps["impute"], numeric.named_steps["scale"]
            if imputer.strategy != "median" or not scaler.with_mean or not scaler.with_std:
                raise Uncompilable("numeric pipeline differs from build_preprocessor's")
            # The fill values and indicator columns, read from the imputer itself: one
            # all-missing row comes out as [fill values..., 1 for each indicator].
            with warnings.catch_warnings():  # fitted on a DataFrame; the probe is an array
                warnings.simplefilter("ignore", UserWarning)
                probe = imputer.transform(np.full((1, n_num), np.nan))[0]
            self.fill = probe[:n_num].astype(np.float64)
            indicator = imputer.indicator_.features_ if imputer.add_indicator else np.array([], int)
            self.indicator_of = np.asarray(indicator, dtype=np.intp)
            self.mean = scaler.mean_.astype(np.float64)
            self.scale = scaler.scale_.astype(np.float64)
            self.numeric_start = columns.output_indices_["numeric"].start
        else:
            self.fill = self.mean = self.scale = np.zeros(0)
            self.indicator_of = np.zeros(0, dtype=np.intp)
            self.numeric_start = 0
        self.fill_list = self.fill.tolist()
        self.mean_list = self.mean.tolist()
        self.scale_list = self.scale.tolist()
        self.indicator_list = self.indicator_of.tolist()
        self.ever_missing = frozenset(self.numeric_features[i] for i in self.indicator_list)
        self.tables: list[dict[str, int]] = []
        self.missing_column: list[int | None] = []
        self.categories: dict[str, list[str]] = {}
        # Which raw feature (index into ``features``) each encoded column belongs to: a
        # numeric column and its missing indicator, a category's one-hot block.
        self.features = self.numeric_features + self.categorical_features
        self.column_feature = np.full(self.n_encoded, -1, dtype=np.intp)
        self.column_feature[self.numeric_start:self.numeric_start + n_num] = np.arange(n_num)
        self.column_feature[self.numeric_start + n_num:self.numeric_start + n_num + len(self.indicator_of)] = \
            self.indicator_of
        self.one_hot_blocks: list[tuple[int, list[str]]] = []  # (first column, categories) per categorical feature
        if self.categorical_features:
            one_hot = columns.named_transformers_["categorical"].named_steps["one_hot"]
            if (one_hot.drop is not None or one_hot.handle_unknown != "ignore"
                    or getattr(one_hot, "_infrequent_enabled", False)):
                raise Uncompilable("one-hot encoder differs from build_preprocessor's")
            offset = columns.output_indices_["categorical"].start
            for column, cats in zip(self.categorical_features, one_hot.categories_):
                table = _category_table(cats, spec.category_aliases.get(column, {}), offset)
                self.tables.append(table)
                missing = {str(c): offset + i for i, c in enumerate(cats)}.get(MISSING_CATEGORY)
                self.missing_column.append(missing)
                self.categories[column] = [str(c) for c in cats if c != MISSING_CATEGORY]
                self.one_hot_blocks.append((offset, [str(c) for c in cats]))
                self.column_feature[offset:offset + len(cats)] = n_num + len(self.one_hot_blocks) - 1
                offset += len(cats)
        self.seen_missing_category = frozenset(
            c for c, m in zip(self.categorical_features, self.missing_column) if m is not None)
        classifier = predictor.classifier
        if list(getattr(classifier, "classes_", [])) != [0, 1]:
            raise Uncompilable(f"classifier classes {getattr(classifier, 'classes_', None)} are not [0, 1]")
        if type(classifier) is LogisticRegression:
            self.scorer = LinearScorer(classifier)
        elif type(classifier) is HistGradientBoostingClassifier:
            self.scorer = ForestScorer(classifier)
        else:
            raise Uncompilable(f"no fast path for {type(classifier).__name__}")
        # Artifacts from before calibration have no such attribute value: None.
        self.calibrator = compile_calibrator(getattr(predictor, "calibrator", None))

    def category_column(self, j: int, text: str | None) -> int | None:
        """Encoded column of categorical feature ``j`` for raw ``text`` (None: all zeros)."""
        key = category_key(text)
        if key is None:
            return self.missing_column[j]
        return self.tables[j].get(key)

    def encode_one(self, numeric: list[float], categories: list[str | None]) -> list[float]:
        """One record -> its encoded feature vector (a list, for the scalar scorers)."""
        x = [0.0] * self.n_encoded
        fill, mean, scale, n = self.fill_list, self.mean_list, self.scale_list, self.n_numeric
        start = self.numeric_start
        for i, value in enumerate(numeric):
            if value != value:  # NaN: missing
                value = fill[i]
            x[start + i] = (value - mean[i]) / scale[i]
        for k, i in enumerate(self.indicator_list):
            flag = 1.0 if numeric[i] != numeric[i] else 0.0
            x[start + n + k] = (flag - mean[n + k]) / scale[n + k]
        for j, text in enumerate(categories):
            column = self.category_column(j, text)
            if column is not None:
                x[column] = 1.0
        return x

    def encode_many(self, records: EncodedRecords) -> np.ndarray:
        """Records -> float64 (n_rows, n_encoded), exactly as the fitted preprocessor."""
        n_rows = len(records)
        X = np.zeros((n_rows, self.n_encoded))
        if self.n_numeric:
            block = self.numeric_block(records.numeric)
            X[:, self.numeric_start:self.numeric_start + block.shape[1]] = block
        all_rows = np.arange(n_rows)
        for j, texts in enumerate(records.categories):
            codes, lookup = self.category_codes(j, texts, records.codes[j] if records.codes else None)
            columns = np.array([np.nan if c is None else c for c in lookup], dtype=float)[codes]
            known = ~np.isnan(columns)  # NaN: an unseen category, all zeros
            X[all_rows[known], columns[known].astype(np.intp)] = 1.0
        return X

    def numeric_block(self, raw: np.ndarray) -> np.ndarray:
        """The numeric features' encoded columns (n_rows, n_numeric + indicators): the
        imputed values, then the missing indicators, standardized."""
        missing = np.isnan(raw)
        block = np.concatenate([np.where(missing, self.fill, raw),
                                missing[:, self.indicator_of].astype(np.float64)], axis=1)
        block -= self.mean
        block /= self.scale
        return block

    def category_codes(self, j: int, texts, factorized: tuple[np.ndarray, list] | None = None
                       ) -> tuple[np.ndarray, list[int | None]]:
        """(code per row, encoded column per code) of categorical feature ``j``: the
        column is None for an unseen category, and code -1 (the list's last entry) is
        a missing value. ``factorized``: the codes and distinct texts, if known."""
        # Few distinct values per column: normalize each once, not once per row.
        # A frame's column is factorized as it is stored (Arrow strings without
        # becoming Python objects first: a quarter of a logistic model's batch time).
        if factorized is not None:
            codes, uniques = factorized
        else:
            values = texts.array if isinstance(texts, pd.Series) else np.asarray(texts, dtype=object)
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
        lookup = [self.category_column(j, as_text(u)) for u in uniques]
        lookup.append(self.category_column(j, None))  # code -1: missing
        return codes, lookup

    def linear_raw(self, records: EncodedRecords) -> np.ndarray:
        """A linear classifier's ``x . coef + intercept`` without the encoded matrix: the
        numeric block times its coefficients, plus each row's one-hot coefficient per
        category, looked up by code (the matrix was most of a logistic batch's model
        time). Only the summation order differs from ``raw_many``."""
        coef = self.scorer.coef
        raw = np.full(len(records), self.scorer.intercept)
        if self.n_numeric:
            block = self.numeric_block(records.numeric)
            raw += block @ coef[self.numeric_start:self.numeric_start + block.shape[1]]
        for j, texts in enumerate(records.categories):
            codes, lookup = self.category_codes(j, texts, records.codes[j] if records.codes else None)
            raw += np.array([0.0 if c is None else coef[c] for c in lookup])[codes]
        return raw

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn) of each raw record of a DataFrame (spec columns): shape (n_rows,).

        The batch scorer of the churn-risk list: the fitted pipeline's arithmetic applied
        to whole columns, equal to ``ChurnPredictor.predict_proba`` within 1e-9.
        """
        parts = self.split_frame(frame)
        if len(parts) == 1:
            return self.predict_many(self.frame_records(frame), split=True)
        # Each thread encodes and walks its own rows, so one thread's encoding (which
        # holds the GIL) overlaps the other's tree walk (which releases it) instead of
        # leaving a core idle (BENCHMARKS.md, "Churn-risk list throughput").
        with ThreadPoolExecutor(len(parts)) as pool:
            return np.concatenate(list(pool.map(
                lambda part: self.predict_many(self.frame_records(part), split=False), parts)))

    def split_frame(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        """``frame`` cut into the parts worth a thread each (one for a linear model)."""
        parts = self.scorer.parts(len(frame)) if isinstance(self.scorer, ForestScorer) else 1
        if parts == 1:
            return [frame]
        bounds = np.linspace(0, len(frame), parts + 1).astype(int)
        return [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def frame_records(self, frame: pd.DataFrame) -> EncodedRecords:
        """The spec columns of a DataFrame of raw records, as the fast path takes them."""
        n_rows = len(frame)
        numeric = (np.column_stack([to_float(frame[c]).to_numpy(np.float64) for c in self.numeric_features])
                   if self.numeric_features else np.empty((n_rows, 0)))
        categories = [frame[c] for c in self.categorical_features]
        return EncodedRecords(np.ascontiguousarray(numeric), categories)

    def predict_one(self, numeric: list[float], categories: list[str | None]) -> float:
        """P(churn) of one record, without NumPy for the linear model and without pandas."""
        x = self.encode_one(numeric, categories)
        if self.calibrator is None:
            return self.scorer.one(x)
        return self.calibrator.one(self.scorer.raw_one(x))

    def predict_many(self, records: EncodedRecords, split: bool = True) -> np.ndarray:
        """P(churn) of each record: shape (n_rows,). ``split=False`` keeps the tree walk
        in the calling thread (the caller already runs one thread per part)."""
        if isinstance(self.scorer, LinearScorer):
            raw = self.linear_raw(records)
            return self.scorer.probability_of_raw(raw) if self.calibrator is None else self.calibrator.many(raw)
        X = self.encode_many(records)
        if self.calibrator is None:
            return self.scorer.many(X, split)
        return self.calibrator.many(self.scorer.raw_many(X, split))


def batch_scorer(predictor: ChurnPredictor):
    """``frame -> P(churn)`` for batch scoring: the compiled arrays when the pipeline
    compiles, else the pipeline itself (same numbers, slower)."""
    try:
        return CompiledChurnModel(predictor).predict_frame
    except Uncompilable:
        return predictor.predict_proba
