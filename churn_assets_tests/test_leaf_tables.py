"""Leaf tables must reach the leaves scikit-learn's walk reaches and sum them in its order."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from churn_assets.serving import leaf_tables
from churn_assets.serving.scorers import ForestScorer
from churn_assets.serving.leaf_tables import LeafTables, TooManyLeaves


def churn_like_rows(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Numeric columns with many bins, one with few, one-hot columns, some NaN; a label
    that depends on all of them so that the trees split on every kind."""
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n_rows, 4)) * [1, 10, 100, 0.1]
    few = rng.integers(0, 7, size=(n_rows, 1)).astype(float)
    one_hot = np.eye(9)[rng.integers(0, 9, size=n_rows)]
    X = np.hstack([numeric, few, one_hot])
    logit = numeric[:, 0] + 0.1 * numeric[:, 1] - 0.01 * numeric[:, 2] + 0.5 * few[:, 0] - 2 * one_hot[:, 3]
    y = (logit + rng.normal(size=n_rows) > 1.0).astype(int)
    X[rng.random(X.shape) < 0.03] = np.nan
    return X, y


@pytest.fixture(scope="module")
def rows():
    return churn_like_rows(6000, seed=1)


@pytest.mark.parametrize("leaves", [31, 63])
def test_raw_scores_are_bit_identical_to_scikit_learns_walk(rows, leaves):
    X, y = rows
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=leaves, random_state=0).fit(X, y)
    tables = LeafTables(clf)
    assert tables.mask_dtype == (np.uint32 if leaves <= 32 else np.uint64)
    fresh, _ = churn_like_rows(5000, seed=2)  # more than one block, with NaN rows walked
    binned = clf._bin_mapper.transform(fresh)
    assert (binned == clf._bin_mapper.missing_values_bin_idx_).any(axis=1).mean() > 0.2
    assert np.array_equal(tables.raw(binned), clf._raw_predict(fresh)[:, 0])


def test_rows_without_missing_values_never_touch_the_walk(rows, monkeypatch):
    X, y = rows
    clf = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    tables = LeafTables(clf)
    complete = np.nan_to_num(churn_like_rows(3000, seed=3)[0])
    expected = clf._raw_predict(complete)[:, 0]
    monkeypatch.setattr(clf, "_predict_iterations", None)  # calling the walk would raise
    assert np.array_equal(tables.raw(clf._bin_mapper.transform(complete)), expected)


def test_one_hot_columns_share_a_table(rows):
    X, y = rows
    clf = HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(X, y)
    tables = LeafTables(clf)
    assert max(len(group) for group in tables.groups) >= 4
    assert all(len(table) <= leaf_tables.MAX_TABLE_ROWS or len(group) == 1
               for group, table in zip(tables.groups, tables.tables))


def test_trees_without_splits_score_their_single_leaf():
    X = np.random.default_rng(0).normal(size=(200, 3))
    y = np.arange(200) % 2
    clf = HistGradientBoostingClassifier(max_iter=5, min_samples_leaf=150).fit(X, y)
    assert all(len(per_iteration[0].nodes) == 1 for per_iteration in clf._predictors)
    tables = LeafTables(clf)
    assert np.array_equal(tables.raw(clf._bin_mapper.transform(X)), clf._raw_predict(X)[:, 0])


def test_trees_with_more_leaves_than_a_mask_holds_are_refused(rows):
    X, y = rows
    clf = HistGradientBoostingClassifier(max_iter=3, max_leaf_nodes=100, min_samples_leaf=5, random_state=0).fit(X, y)
    assert max(int(p[0].nodes["is_leaf"].sum()) for p in clf._predictors) > 64
    with pytest.raises(TooManyLeaves):
        LeafTables(clf)
    forest = ForestScorer(clf)  # the fast path falls back to scikit-learn's walk
    assert forest.leaf_tables is None
    filled = np.nan_to_num(X)
    assert np.array_equal(forest.raw_many(filled), clf._raw_predict(filled)[:, 0])
