"""The classifier and calibrator halves of the fast path, as arrays.

``CompiledChurnModel`` (``fast_path.py``) encodes records as the fitted preprocessor
does; the scorers here turn encoded rows (float64, shape (n_rows, n_encoded)) into the
classifier's decision value and P(churn), one record at a time (``raw_one``/``one``,
plain Python or small NumPy) or in batches (``raw_many``/``many``). A fitted object they
cannot reproduce exactly raises ``Uncompilable``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from churn_assets.serving.leaf_tables import LeafTables, TooManyLeaves, walked_raw


class Uncompilable(ValueError):
    """The predictor's pipeline is not one the fast path knows how to reproduce exactly."""


class LinearScorer:
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

    @staticmethod
    def probability_of_raw(raw: np.ndarray) -> np.ndarray:
        """The classifier's own P(churn) of decision values ``raw`` (n,)."""
        return expit(raw)


class ForestScorer:
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
        return float(self.baseline + self.value.take(self.leaves_one(x)).sum())

    def leaves_one(self, x: list[float]) -> np.ndarray:
        """The node (index into the flat node arrays) where one encoded row ends in each
        tree: intp, shape (n_trees,)."""
        # Same test as scikit-learn's tree walk: x <= threshold goes left.
        step = np.where(np.array(x).take(self.feature) > self.threshold, self.right, self.left)
        node = self.roots
        for _ in range(self.depth):
            node = step.take(node)
        return node

    def one(self, x: list[float]) -> float:
        return float(expit(self.raw_one(x)))

    def raw_many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        """The decision function (raw boosted score), shape (n_rows,)."""
        return self._raw(X, split)[:, 0]

    def many(self, X: np.ndarray, split: bool = True) -> np.ndarray:
        return self.clf._loss.predict_proba(self._raw(X, split))[:, 1]

    def probability_of_raw(self, raw: np.ndarray) -> np.ndarray:
        """The classifier's own P(churn) of raw scores ``raw`` (n,)."""
        return self.clf._loss.predict_proba(raw[:, None])[:, 1]

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
        tables where the trees fit them (bit-identical, and faster: see ``leaf_tables``), else by
        scikit-learn's own walk.

        Binning is exact: a node sends ``x`` left when ``x <= thresholds[b]``, and the bin
        mapper puts ``x`` in the first bin ``i`` with ``x <= thresholds[i]``, so
        ``bin(x) <= b`` is the same test.
        """
        binned = self._bin(X)
        if self.leaf_tables is not None:
            return self.leaf_tables.raw(binned)[:, None]
        return walked_raw(self.clf, binned)


class SigmoidCalibrator:
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


class IsotonicCalibrator:
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


def compile_calibrator(calibrator) -> SigmoidCalibrator | IsotonicCalibrator | None:
    if calibrator is None:
        return None
    if calibrator.method == "sigmoid" and type(calibrator.model) is LogisticRegression:
        return SigmoidCalibrator(calibrator.model)
    if calibrator.method == "isotonic" and type(calibrator.model) is IsotonicRegression:
        return IsotonicCalibrator(calibrator.model)
    raise Uncompilable(f"no fast path for a {calibrator.method} calibrator of type {type(calibrator.model).__name__}")
