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

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.categories import as_text, category_key
from churn_assets.core.features import MISSING_CATEGORY, to_float
from churn_assets.serving.leaf_tables import LeafTables, TooManyLeaves

NAN = float("nan")


class Uncompilable(ValueError):
    """The predictor's pipeline is not one the fast path knows how to reproduce exactly."""


@dataclass(frozen=True)
class EncodedRecords:
    """Checked records as the fast path takes them, column by column.

    ``numeric``: float64 (n_rows, n_numeric), NaN where missing. ``categories``: one list
    (or pandas Series) per categorical feature (spec order) of the raw texts, None where
    missing.
    """

    numeric: np.ndarray
    categories: list[list[str | None] | pd.Series]

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


class _Linear:
    """Binary LogisticRegression: P(churn) = expit(x . coef + intercept)."""

    def __init__(self, clf: LogisticRegression) -> None:
        self.coef = clf.coef_[0].astype(np.float64)
        self.coef_list = self.coef.tolist()
        self.intercept = float(clf.intercept_[0])

    def raw_one(self, x: list[float]) -> float:
        z = self.intercept
        for value, weight in zip(x, self.coef_list):
            z += value * weight
        return z

    def raw_many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        return X @ self.coef + self.intercept

    def one(self, x: list[float]) -> float:
        return float(expit(self.raw_one(x)))

    def many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        return expit(self.raw_many(X))


class _Forest:
    """Binary HistGradientBoostingClassifier as flat node arrays.

    Every tree's nodes go into one array, a leaf's children being the leaf itself. For
    one row, every node's decision is taken at once (``next = right if x[feature] >
    threshold else left``: three vector operations over all nodes), then each tree
    follows its chain for ``depth`` steps, one gather per level for all trees. Inputs
    are never NaN here (the imputer filled them), so scikit-learn's missing-value
    branch is never taken and is not needed.
    """

    def __init__(self, clf: HistGradientBoostingClassifier) -> None:
        trees = [per_iteration[0] for per_iteration in clf._predictors]
        if any(len(per_iteration) != 1 for per_iteration in clf._predictors):
            raise Uncompilable("HistGradientBoostingClassifier with more than one tree per iteration")
        if any(tree.nodes["is_categorical"].any() for tree in trees):
            raise Uncompilable("HistGradientBoostingClassifier with native categorical splits")
        sizes = [len(tree.nodes) for tree in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        nodes = np.concatenate([tree.nodes for tree in trees])
        owner = np.repeat(offsets, sizes)
        own = np.arange(len(nodes), dtype=np.intp)
        leaf = nodes["is_leaf"].astype(bool)
        self.left = np.where(leaf, own, nodes["left"].astype(np.intp) + owner)
        self.right = np.where(leaf, own, nodes["right"].astype(np.intp) + owner)
        self.feature = np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp)
        self.threshold = np.where(leaf, np.inf, nodes["num_threshold"])  # a leaf "goes left" to itself
        self.value = nodes["value"].astype(np.float64)
        self.roots = offsets
        self.depth = int(max(tree.nodes["depth"].max() for tree in trees))
        self.baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
        self.clf = clf
        bin_mapper = clf._bin_mapper
        if np.any(bin_mapper.is_categorical_):
            raise Uncompilable("HistGradientBoostingClassifier with categorical features")
        self.bin_thresholds = [np.asarray(t, dtype=np.float64) for t in bin_mapper.bin_thresholds_]
        self.missing_bin = bin_mapper.missing_values_bin_idx_
        self.threads = max(1, min(4, os.cpu_count() or 1))
        try:
            self.leaf_tables: LeafTables | None = LeafTables(clf)
        except TooManyLeaves:
            self.leaf_tables = None

    def raw_one(self, x: list[float]) -> float:
        # Same test as scikit-learn's tree walk: x <= threshold goes left.
        step = np.where(np.array(x).take(self.feature) > self.threshold, self.right, self.left)
        node = self.roots
        for _ in range(self.depth):
            node = step.take(node)
        return float(self.baseline + self.value.take(node).sum())

    def one(self, x: list[float]) -> float:
        return float(expit(self.raw_one(x)))

    def raw_many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        """The decision function (raw boosted score), shape (n_rows,)."""
        return self._raw(X, split)[:, 0]

    def many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        return self.clf._loss.predict_proba(self._raw(X, split))[:, 1]

    def parts(self, n_rows: int) -> int:
        """Threads worth using for ``n_rows``: one per 2,000 rows, at most ``threads``."""
        return min(self.threads, max(1, n_rows // 2000))

    def _raw(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        # scikit-learn's own compiled tree walk (the batch pipeline's code), one thread
        # per chunk of rows: its OpenMP mode meets at a barrier after each of the
        # hundreds of trees, which on a busy 2-core machine costs more than it saves.
        chunks = np.array_split(X, self.parts(len(X)) if split else 1)
        if len(chunks) == 1:
            raw = self._raw_binned(X)
        else:
            with ThreadPoolExecutor(len(chunks)) as pool:  # the tree walk releases the GIL
                raw = np.concatenate(list(pool.map(self._raw_binned, chunks)))
        return raw

    def _bin(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's ``_bin_mapper.transform(X)``, column by column with ``np.searchsorted``: about a
        quarter less CPU than scikit-learn's per-value binary search, same bins. Its
        search puts ``x`` in the first bin ``i`` with ``x <= thresholds[i]``, which is
        ``searchsorted(thresholds, x, side="left")``; NaN (never produced by the imputer,
        kept for safety) goes to the missing-values bin as there."""
        binned = np.empty(X.shape, dtype=np.uint8, order="F")
        for j, thresholds in enumerate(self.bin_thresholds):
            column = X[:, j]
            if len(thresholds) == 1:  # a one-hot column: one compare, not a binary search
                np.greater(column, thresholds[0], out=binned[:, j], casting="unsafe")
            else:
                binned[:, j] = np.searchsorted(thresholds, column, side="left")
            missing = np.isnan(column)
            if missing.any():
                binned[missing, j] = self.missing_bin
        return binned

    def _raw_binned(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's raw prediction from the binned matrix, shape (n_rows, 1): by leaf
        tables where the trees fit them (bit-identical, about four times less CPU), else by
        scikit-learn's own walk.

        Binning is exact: a node sends ``x`` left when ``x <= thresholds[b]``, and the bin
        mapper puts ``x`` in the first bin ``i`` with ``x <= thresholds[i]``, so
        ``bin(x) <= b`` is the same test.
        """
        binned = self._bin(X)
        if self.leaf_tables is not None:
            return self.leaf_tables.raw(binned)[:, None]
        raw = np.zeros((len(X), 1), dtype=self.clf._baseline_prediction.dtype, order="F")
        raw += self.clf._baseline_prediction
        self.clf._predict_iterations(binned, self.clf._predictors, raw, is_binned=True, n_threads=1)
        return raw


class _Sigmoid:
    """Platt calibration: expit(a * f + b), as the calibrating LogisticRegression computes it."""

    def __init__(self, model: LogisticRegression) -> None:
        if model.coef_.shape != (1, 1) or list(model.classes_) != [0, 1]:
            raise Uncompilable("sigmoid calibrator is not a one-feature binary LogisticRegression")
        self.a = float(model.coef_[0, 0])
        self.b = float(model.intercept_[0])

    def one(self, f: float) -> float:
        return float(expit(f * self.a + self.b))

    def many(self, f: np.ndarray) -> np.ndarray:
        return expit(f * self.a + self.b)


class _Isotonic:
    """IsotonicRegression(out_of_bounds="clip"): clip to the fitted range, then linear
    interpolation between the fitted thresholds (scipy's interp1d there, np.interp here:
    the same line between the same two points, so equal up to rounding)."""

    def __init__(self, model: IsotonicRegression) -> None:
        if model.out_of_bounds != "clip":
            raise Uncompilable(f"isotonic calibrator with out_of_bounds={model.out_of_bounds!r}")
        self.x = np.asarray(model.X_thresholds_, dtype=np.float64)
        self.y = np.asarray(model.y_thresholds_, dtype=np.float64)
        self.low, self.high = float(model.X_min_), float(model.X_max_)

    def one(self, f: float) -> float:
        return float(np.interp(min(max(f, self.low), self.high), self.x, self.y))

    def many(self, f: np.ndarray) -> np.ndarray:
        return np.interp(np.clip(f, self.low, self.high), self.x, self.y)


def _compile_calibrator(calibrator) -> _Sigmoid | _Isotonic | None:
    if calibrator is None:
        return None
    if calibrator.method == "sigmoid" and type(calibrator.model) is LogisticRegression:
        return _Sigmoid(calibrator.model)
    if calibrator.method == "isotonic" and type(calibrator.model) is IsotonicRegression:
        return _Isotonic(calibrator.model)
    raise Uncompilable(f"no fast path for a {calibrator.method} calibrator of type {type(calibrator.model).__name__}")


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
                offset += len(cats)
        self.seen_missing_category = frozenset(
            c for c, m in zip(self.categorical_features, self.missing_column) if m is not None)
        classifier = predictor.classifier
        if list(getattr(classifier, "classes_", [])) != [0, 1]:
            raise Uncompilable(f"classifier classes {getattr(classifier, 'classes_', None)} are not [0, 1]")
        if type(classifier) is LogisticRegression:
            self.scorer = _Linear(classifier)
        elif type(classifier) is HistGradientBoostingClassifier:
            self.scorer = _Forest(classifier)
        else:
            raise Uncompilable(f"no fast path for {type(classifier).__name__}")
        # Artifacts from before calibration have no such attribute value: None.
        self.calibrator = _compile_calibrator(getattr(predictor, "calibrator", None))

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
            raw = records.numeric
            missing = np.isnan(raw)
            block = np.concatenate([np.where(missing, self.fill, raw),
                                    missing[:, self.indicator_of].astype(np.float64)], axis=1)
            block -= self.mean
            block /= self.scale
            X[:, self.numeric_start:self.numeric_start + block.shape[1]] = block
        all_rows = np.arange(n_rows)
        for j, texts in enumerate(records.categories):
            # Few distinct values per column: normalize each once, not once per row.
            # A frame's column is factorized as it is stored (Arrow strings without
            # becoming Python objects first: a quarter of a logistic model's batch time).
            values = texts.array if isinstance(texts, pd.Series) else np.asarray(texts, dtype=object)
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            lookup = [self.category_column(j, as_text(u)) for u in uniques]
            lookup.append(self.category_column(j, None))  # code -1: missing
            columns = np.array([np.nan if c is None else c for c in lookup], dtype=float)[codes]
            known = ~np.isnan(columns)  # NaN: an unseen category, all zeros
            X[all_rows[known], columns[known].astype(np.intp)] = 1.0
        return X

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn) of each raw record of a DataFrame (spec columns): shape (n_rows,).

        The batch scorer of the churn-risk list: the fitted pipeline's arithmetic applied
        to whole columns, equal to ``ChurnPredictor.predict_proba`` within 1e-9.
        """
        parts = self.scorer.parts(len(frame)) if isinstance(self.scorer, _Forest) else 1
        if parts == 1:
            return self._predict_frame_part(frame, split=True)
        # Each thread encodes and walks its own rows, so one thread's encoding (which
        # holds the GIL) overlaps the other's tree walk (which releases it) instead of
        # leaving a core idle (BENCHMARKS.md, "Churn-risk list throughput").
        bounds = np.linspace(0, len(frame), parts + 1).astype(int)
        pieces = [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        with ThreadPoolExecutor(parts) as pool:
            return np.concatenate(list(pool.map(self._predict_frame_part, pieces)))

    def _predict_frame_part(self, frame: pd.DataFrame, split: bool = False) -> np.ndarray:
        n_rows = len(frame)
        numeric = (np.column_stack([to_float(frame[c]).to_numpy(np.float64) for c in self.numeric_features])
                   if self.numeric_features else np.empty((n_rows, 0)))
        categories = [frame[c] for c in self.categorical_features]
        return self.predict_many(EncodedRecords(np.ascontiguousarray(numeric), categories), split)

    def predict_one(self, numeric: list[float], categories: list[str | None]) -> float:
        """P(churn) of one record, without NumPy for the linear model and without pandas."""
        x = self.encode_one(numeric, categories)
        if self.calibrator is None:
            return self.scorer.one(x)
        return self.calibrator.one(self.scorer.raw_one(x))

    def predict_many(self, records: EncodedRecords, split: bool = True) -> np.ndarray:
        """P(churn) of each record: shape (n_rows,). ``split=False`` keeps the tree walk
        in the calling thread (the caller already runs one thread per part)."""
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
