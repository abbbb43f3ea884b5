"""Reasons per customer: how much each raw feature pushes a customer's churn log-odds.

Every explanation is additive: ``base + contributions.sum() == the model's score`` (to
about 1e-12), with one contribution per raw feature of the spec (a numeric column and
its missing indicator together, a categorical column's whole one-hot block together).
The base is the training window's average customer: the mean decision value over the
rows the model was fitted on.

- Logistic regression, exact: ``coef * (x - mean x)`` per encoded column, summed per raw
  feature. The scaler centres numeric columns and missing indicators on their training
  mean, so their deviation is the encoded value itself; a one-hot column's mean is its
  category's share of the training window (``RecordNormalizer.category_shares_``; an
  artifact fitted before the shares were recorded gets an equal mix of its categories,
  and ``reference`` says so).
- Histogram gradient boosting: path attributions (Saabas; XGBoost's ``approx_contribs``,
  treeinterpreter): each split on the path a customer takes credits the change of the
  tree's expected value (the training rows' mean under the node, from the nodes' counts)
  to the raw feature it tests. Per tree, that sum depends only on the leaf reached, so it
  is tabled once per leaf and a row's attributions are one gather per tree from the
  leaves the leaf tables find. The base is the expected value of the roots, the training
  window's mean raw score. Not Shapley values: exact TreeSHAP costs a pass over every
  leaf of every tree per customer, 100 times the goal's budget (BENCHMARKS.md, "Reasons").

Scale. The contributions are on the classifier's decision value. The served probability
is ``expit(f)`` without a calibrator, ``expit(a * f + b)`` with Platt scaling: the
explanation is then reported on the calibrated log-odds, every contribution times ``a``
and the base ``a * base + b``. Isotonic calibration is not linear: the explanation stays
on the decision value (``scale == "decision value"``), whose order it keeps.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churn_assets.serving.fast_path import CompiledChurnModel, EncodedRecords, Uncompilable
from churn_assets.serving.leaf_tables import BLOCK_ROWS
from churn_assets.serving.scorers import ForestScorer, IsotonicCalibrator, LinearScorer, SigmoidCalibrator

REASONS = 3
GATHER_ROWS = 128
LOG_ODDS = "log-odds"
DECISION = "decision value"


@dataclass(frozen=True)
class Explained:
    """Probabilities and explanations of ``n`` customers.

    ``probability`` (n,); ``contributions`` (n, n_features), on ``scale``; ``base`` a float
    on the same scale, ``base + contributions.sum(axis=1)`` the customer's score there.
    """

    probability: np.ndarray
    contributions: np.ndarray
    base: float
    scale: str


def tree_path_table(nodes: np.ndarray, leaves: list[int], group_of: np.ndarray, n_groups: int
                    ) -> tuple[np.ndarray, float]:
    """One tree's path attributions per leaf, and its expected value.

    ``nodes``: a scikit-learn histogram tree's node records; ``leaves``: node index of each
    leaf, left to right; ``group_of``: raw feature of each encoded column. Returns
    (len(leaves), n_groups) float64, row ``i`` the attributions of a row reaching leaf
    ``leaves[i]`` (summing to its value minus the expected value), and the expected value:
    the mean over the training rows (``count``) of the leaf values.
    """
    left, right, leaf = nodes["left"], nodes["right"], nodes["is_leaf"].astype(bool)
    expected = np.zeros(len(nodes))
    weight = np.zeros(len(nodes))
    order = []  # parents before children
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if not leaf[node]:
            stack += [int(left[node]), int(right[node])]
    for node in reversed(order):  # children before parents
        if leaf[node]:
            weight[node] = max(float(nodes["count"][node]), 1e-12)
            expected[node] = nodes["value"][node]
        else:
            lw, rw = weight[left[node]], weight[right[node]]
            weight[node] = lw + rw
            expected[node] = (lw * expected[left[node]] + rw * expected[right[node]]) / weight[node]
    path = np.zeros((len(nodes), n_groups))
    for node in order:
        if not leaf[node]:
            group = group_of[nodes["feature_idx"][node]]
            for child in (int(left[node]), int(right[node])):
                path[child] = path[node]
                path[child, group] += expected[child] - expected[node]
    return path[leaves], float(expected[0])


class ChurnExplainer:
    """Additive explanations of a compiled model's scores, per raw feature (``features``)."""

    def __init__(self, compiled: CompiledChurnModel, category_shares: dict[str, dict[str, float]] | None):
        self.compiled = compiled
        self.features = compiled.features
        group_of = compiled.column_feature
        if (group_of < 0).any():
            raise ValueError("an encoded column belongs to no raw feature")
        n_groups = len(self.features)
        calibrator = compiled.calibrator
        if isinstance(calibrator, SigmoidCalibrator):
            self.slope, self.intercept, self.scale = calibrator.a, calibrator.b, LOG_ODDS
        elif isinstance(calibrator, IsotonicCalibrator):
            self.slope, self.intercept, self.scale = 1.0, 0.0, DECISION
        else:
            self.slope, self.intercept, self.scale = 1.0, 0.0, LOG_ODDS
        scorer = compiled.scorer
        if isinstance(scorer, LinearScorer):
            self.reference, self.reference_note = self._encoded_mean(category_shares)
            member = np.zeros((compiled.n_encoded, n_groups))
            member[np.arange(compiled.n_encoded), group_of] = 1.0
            # contributions = ((X - reference) * coef) @ member, folded into one matrix.
            self.weights = scorer.coef[:, None] * member
            self.raw_base = float(scorer.intercept + scorer.coef @ self.reference)
            self.tables = None
        elif isinstance(scorer, ForestScorer) and scorer.leaf_tables is not None:
            tables = scorer.leaf_tables
            trees = [p[0].nodes for p in scorer.clf._predictors]
            width = tables.leaf_values.shape[1]
            path = np.zeros((len(trees), width, n_groups))
            expected = 0.0
            for t, nodes in enumerate(trees):
                per_leaf, root = tree_path_table(nodes, tables.leaf_nodes[t], group_of, n_groups)
                path[t, :len(per_leaf)] = per_leaf
                expected += root
            # Only the (tree, feature) pairs where the tree tests the feature: a tree tests
            # a handful of the features, so most pairs add nothing. Pairs are laid out
            # feature after feature, so one gather and one ``reduceat`` sum them per row.
            trees_of, flat, starts = [], [], []
            for g in range(n_groups):
                used = np.flatnonzero(np.abs(path[:, :, g]).max(axis=1) > 0)
                starts.append(len(trees_of))
                trees_of.extend(used.tolist())
                flat.append(path[used, :, g].ravel())
            self.pair_tree = np.asarray(trees_of, dtype=np.intp)
            self.pair_shift = (np.arange(len(trees_of), dtype=np.intp) - self.pair_tree) * width
            self.pair_values = np.concatenate(flat) if flat else np.zeros(0)
            self.group_start = np.asarray(starts, dtype=np.intp)
            self.group_starts = np.minimum(self.group_start, max(len(trees_of) - 1, 0))
            self.empty_groups = np.flatnonzero(np.diff(np.append(self.group_start, len(trees_of))) == 0)
            self.tables = True
            # A node of the flat node arrays (``ForestScorer``) -> its leaf in the tables.
            self.node_leaf = np.zeros(len(scorer.value), dtype=np.intp)
            for t, leaves in enumerate(tables.leaf_nodes):
                self.node_leaf[scorer.roots[t] + np.asarray(leaves, dtype=np.intp)] = t * width + np.arange(len(leaves))
            self.raw_base = float(tables.baseline + expected)
            self.reference_note = "the training rows' mean raw score (the trees' node counts)"
        else:
            raise ValueError(f"no explanation for {type(scorer).__name__} without leaf tables")
        self.base = self.slope * self.raw_base + self.intercept

    def _encoded_mean(self, shares: dict[str, dict[str, float]] | None) -> tuple[np.ndarray, str]:
        """The training window's mean encoded row: 0 for every scaled column (the scaler
        centres them there), each category's share for its one-hot column."""
        reference = np.zeros(self.compiled.n_encoded)
        known = shares is not None and all(c in shares for c in self.compiled.categorical_features)
        for column, (start, categories) in zip(self.compiled.categorical_features, self.compiled.one_hot_blocks):
            if known:
                block = np.array([shares[column].get(c, 0.0) for c in categories])
            else:
                block = np.full(len(categories), 1.0 / len(categories))
            reference[start:start + len(categories)] = block
        note = ("the training window's mean of every encoded column (category shares included)" if known else
                "numeric features at their training mean; categorical features at an equal mix of their"
                " training categories (this model predates recorded category shares)")
        return reference, note

    # -- batches ---------------------------------------------------------------------------
    def explain_encoded(self, X: np.ndarray) -> Explained:
        """Explain encoded rows ``X`` (float64, (n, n_encoded)) on the served scale."""
        scorer = self.compiled.scorer
        if self.tables is None:
            raw = scorer.raw_many(X)
            contributions = X @ self.weights
            contributions -= self.reference @ self.weights  # not X - reference: no copy of X
        else:
            raw, contributions = self._forest(scorer._bin(X))
        calibrator = self.compiled.calibrator
        if calibrator is None:
            probability = scorer.probability_of_raw(raw)
        else:
            probability = calibrator.many(raw)
        if self.slope != 1.0:
            contributions *= self.slope
        return Explained(probability, contributions, self.base, self.scale)

    def _forest(self, binned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tables = self.compiled.scorer.leaf_tables
        if (binned == tables.missing_bin).any():
            raise ValueError("a missing value reached the trees: the imputer should have filled it")
        raw = np.empty(len(binned))
        contributions = np.empty((len(binned), len(self.features)))
        for start in range(0, len(binned), BLOCK_ROWS):
            leaf = tables.leaves(binned[start:start + BLOCK_ROWS])
            stop = start + len(leaf)
            raw[start:stop] = tables.raw_of_leaves(leaf)
            if len(self.pair_tree) == 0:
                contributions[start:stop] = 0.0
                continue
            # A few rows at a time: the index block (rows x pairs) then stays in a core's
            # cache (3x faster than whole 512-row blocks, measured).
            for lo in range(0, len(leaf), GATHER_ROWS):
                index = leaf[lo:lo + GATHER_ROWS].take(self.pair_tree, axis=1)
                index += self.pair_shift
                summed = np.add.reduceat(self.pair_values.take(index), self.group_starts, axis=1)
                # reduceat sums [start_g, start_g+1); a feature no tree tests has an empty
                # run, where reduceat returns the next value instead: zeroed.
                summed[:, self.empty_groups] = 0.0
                contributions[start + lo:start + lo + len(index)] = summed
        return raw, contributions

    def explain_many(self, records: EncodedRecords) -> Explained:
        return self.explain_encoded(self.compiled.encode_many(records))

    def explain_frame(self, frame: pd.DataFrame) -> Explained:
        """Explain raw records of a DataFrame (spec columns), as ``predict_frame`` scores them."""
        parts = self.compiled.split_frame(frame)
        if len(parts) == 1:
            return self.explain_many(self.compiled.frame_records(frame))
        with ThreadPoolExecutor(len(parts)) as pool:
            done = list(pool.map(lambda part: self.explain_many(self.compiled.frame_records(part)), parts))
        return Explained(np.concatenate([d.probability for d in done]),
                         np.concatenate([d.contributions for d in done]), self.base, self.scale)

    def reasons_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """P(churn) (n,) and the reason columns (``reason_columns``) of raw records: the
        risk list's ``explain``."""
        done = self.explain_frame(frame)
        return done.probability, reason_columns(done.contributions, self.features)

    def describe(self) -> dict:
        """The stated baseline and scale, for the run's metadata and the API."""
        return {"base_log_odds": self.base, "scale": self.scale, "baseline": self.reference_note}

    # -- one record ------------------------------------------------------------------------
    def explain_one(self, numeric: list[float], categories: list[str | None]) -> tuple[float, np.ndarray]:
        """P(churn) and the contributions (n_features,) of one record."""
        x = self.compiled.encode_one(numeric, categories)
        if self.tables is None:
            done = self.explain_encoded(np.array([x]))
            return float(done.probability[0]), done.contributions[0]
        # One row: the trees walked by node arrays (no binning, no leaf tables), then the
        # same per-leaf gather as a batch.
        scorer = self.compiled.scorer
        node = scorer.leaves_one(x)
        raw = float(scorer.baseline + scorer.value.take(node).sum())
        leaf = self.node_leaf.take(node)
        contributions = np.add.reduceat(self.pair_values.take(leaf.take(self.pair_tree) + self.pair_shift),
                                        self.group_starts) if len(self.pair_tree) else np.zeros(len(self.features))
        contributions[self.empty_groups] = 0.0
        calibrator = self.compiled.calibrator
        probability = scorer.one(x) if calibrator is None else calibrator.one(raw)
        return probability, contributions * self.slope


def top_reasons(contributions: np.ndarray, features: tuple[str, ...], k: int = REASONS
                ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` features pushing hardest toward churn, per row, strongest first.

    Returns feature indices (n, k) int (-1 where fewer than ``k`` features push up) and their
    effects (n, k) float (NaN there). Only positive contributions are reasons: a feature
    that lowers the risk does not explain why a customer is at risk.
    """
    k = min(k, contributions.shape[1])
    if k < contributions.shape[1]:  # the k largest first (a partition), then only those sorted
        order = np.argpartition(-contributions, k - 1, axis=1)[:, :k]
        within = np.argsort(-np.take_along_axis(contributions, order, axis=1), axis=1, kind="stable")
        order = np.take_along_axis(order, within, axis=1)
    else:
        order = np.argsort(-contributions, axis=1, kind="stable")
    effects = np.take_along_axis(contributions, order, axis=1)
    pushes = effects > 0
    return np.where(pushes, order, -1), np.where(pushes, effects, np.nan)


def reason_columns(contributions: np.ndarray, features: tuple[str, ...], k: int = REASONS) -> dict[str, object]:
    """``reason_1..k`` (feature names, None where none) and ``reason_1_effect..`` columns."""
    order, effects = top_reasons(contributions, features, k)
    names = np.array([*features, None], dtype=object)  # index -1: no reason
    columns: dict[str, object] = {}
    for i in range(k):
        columns[f"reason_{i + 1}"] = names[order[:, i]]
    for i in range(k):
        columns[f"reason_{i + 1}_effect"] = effects[:, i]
    return columns


def explainer_for(compiled: CompiledChurnModel, predictor) -> ChurnExplainer | None:
    """The explainer of a compiled predictor, None when its classifier has none."""
    normalizer = predictor.preprocessor.named_steps.get("normalize")
    shares = getattr(normalizer, "category_shares_", None)
    try:
        return ChurnExplainer(compiled, shares)
    except ValueError:
        return None


def batch_explainer(predictor) -> ChurnExplainer | None:
    """The explainer of ``predictor`` for the risk list (``reasons_frame``), or None when
    its pipeline has no compiled form or its classifier no explanation."""
    try:
        compiled = CompiledChurnModel(predictor)
    except Uncompilable:
        return None
    return explainer_for(compiled, predictor)
