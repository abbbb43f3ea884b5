"""Gradient-boosted trees scored by table lookups instead of tree walks.

The idea is QuickScorer's (Lucchese et al., SIGIR 2015), fitted to binned inputs. Number
each tree's leaves left to right and let the bits of one integer stand for them. A split
that sends a row right rules out every leaf of its left subtree; the leaf the row reaches
is the leftmost one not ruled out. Whether a split sends a row right depends only on the
bin of one feature, so for every feature and bin a table can hold, per tree, the leaves
still possible. Features whose bins together take at most 256 values (the one-hot
columns, mostly) share one table indexed by their combined bins.

Scoring a block of rows is then one gather and AND per table, one lowest-set-bit per tree
and the sum of the leaf values: NumPy work on whole blocks, where scikit-learn's walk
takes a hard-to-predict branch at every node. On the churn model (250 trees of 31 leaves)
the risk list scores 2.1x as many customers a second as with the walk (BENCHMARKS.md,
"Churn-risk list throughput"), with the same numbers: the leaves are the ones
scikit-learn's walk reaches and the trees are summed in its order, so the raw scores are
bit-identical (tested).
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

BLOCK_ROWS = 512  # a block's masks (rows x trees x 4 bytes) stay within a core's L2 (measured best of 256-2048)
MAX_TABLE_ROWS = 256


class TooManyLeaves(ValueError):
    """A tree has more leaves than a 64-bit mask holds; the caller walks the trees instead."""


def _leaf_ranges(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Each node's leaves as the half-open range [low, high) of left-to-right leaf numbers,
    and the node index of every leaf in that order."""
    low = np.zeros(len(nodes), dtype=np.int64)
    high = np.zeros(len(nodes), dtype=np.int64)
    leaves: list[int] = []
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:  # iterative post-order: trees can be deeper than Python's recursion limit
        node, children_done = stack.pop()
        if nodes["is_leaf"][node]:
            low[node], high[node] = len(leaves), len(leaves) + 1
            leaves.append(node)
        elif children_done:
            low[node], high[node] = low[nodes["left"][node]], high[nodes["right"][node]]
        else:
            stack += [(node, True), (int(nodes["right"][node]), False), (int(nodes["left"][node]), False)]
    return low, high, leaves


def _bits(low: int, high: int) -> int:
    return (1 << high) - (1 << low)


def walked_raw(clf: HistGradientBoostingClassifier, binned: np.ndarray) -> np.ndarray:
    """scikit-learn's own compiled walk of ``binned`` (uint8, (n_rows, n_features)) on one
    thread: the raw score, shape (n_rows, 1), as ``_raw_predict`` computes it."""
    raw = np.zeros((len(binned), 1), dtype=clf._baseline_prediction.dtype, order="F")
    raw += clf._baseline_prediction
    clf._predict_iterations(binned, clf._predictors, raw, is_binned=True, n_threads=1)
    return raw


class LeafTables:
    """Raw scores of a binary HistGradientBoostingClassifier from binned rows.

    ``raw(binned)``: binned is (n_rows, n_features) uint8 from the model's bin mapper;
    returns the decision function, shape (n_rows,), equal bit for bit to scikit-learn's
    ``_raw_predict``. Rows holding the missing-values bin go through scikit-learn's walk
    (the imputer leaves none; kept exact for safety).
    """

    def __init__(self, clf: HistGradientBoostingClassifier) -> None:
        trees = [per_iteration[0].nodes for per_iteration in clf._predictors]
        leaf_count = max(int(nodes["is_leaf"].sum()) for nodes in trees)
        if leaf_count > 64:
            raise TooManyLeaves(f"{leaf_count} leaves in one tree")
        self.mask_dtype = np.uint32 if leaf_count <= 32 else np.uint64
        width = np.iinfo(self.mask_dtype).bits
        all_leaves = np.iinfo(self.mask_dtype).max
        bins_per_feature = [int(n) for n in clf._bin_mapper.n_bins_non_missing_]
        per_feature = [np.full((n, len(trees)), all_leaves, dtype=self.mask_dtype) for n in bins_per_feature]
        self.leaf_values = np.zeros((len(trees), width), dtype=np.float64)
        # Per tree, the node index of each leaf in left-to-right order (explanations map
        # a row's leaves back to the trees' nodes with it).
        self.leaf_nodes: list[list[int]] = []
        split_features: set[int] = set()
        for t, nodes in enumerate(trees):
            low, high, leaves = _leaf_ranges(nodes)
            self.leaf_nodes.append(leaves)
            self.leaf_values[t, :len(leaves)] = nodes["value"][leaves]
            for node in np.flatnonzero(~nodes["is_leaf"].astype(bool)):
                left = nodes["left"][node]
                feature = int(nodes["feature_idx"][node])
                split_features.add(feature)
                # bins above the threshold go right; the missing bin is handled by the walk
                ruled_out = self.mask_dtype(all_leaves ^ _bits(int(low[left]), int(high[left])))
                per_feature[feature][int(nodes["bin_threshold"][node]) + 1:, t] &= ruled_out
        self.groups, self.tables = self._grouped(sorted(split_features, key=lambda f: bins_per_feature[f]),
                                                 bins_per_feature, per_feature)
        self.leaf_offsets = np.arange(len(trees), dtype=np.intp) * width - 1  # into leaf_values.ravel()
        self.n_trees = len(trees)
        self.baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
        self.missing_bin = clf._bin_mapper.missing_values_bin_idx_
        self.clf = clf

    @staticmethod
    def _grouped(features: list[int], bins_per_feature: list[int], per_feature: list[np.ndarray]):
        """Pack features (fewest bins first) into groups of at most MAX_TABLE_ROWS bin
        combinations; each group's table is the AND of its features' tables over every
        combination, row ``((b1 * n2) + b2) * n3 + b3 ...``."""
        groups: list[list[tuple[int, int]]] = []
        for feature in features:
            n_bins = bins_per_feature[feature]
            size = np.prod([n for _, n in groups[-1]]) if groups else MAX_TABLE_ROWS + 1
            if size * n_bins <= MAX_TABLE_ROWS:
                groups[-1].append((feature, n_bins))
            else:
                groups.append([(feature, n_bins)])
        tables = []
        for group in groups:
            table = per_feature[group[0][0]]
            for feature, _ in group[1:]:
                table = (table[:, None, :] & per_feature[feature][None, :, :]).reshape(-1, table.shape[1])
            tables.append(np.ascontiguousarray(table))
        return groups, tables

    def raw(self, binned: np.ndarray) -> np.ndarray:
        out = np.empty(len(binned), dtype=np.float64)
        for start in range(0, len(binned), BLOCK_ROWS):
            block = binned[start:start + BLOCK_ROWS]
            out[start:start + len(block)] = self.raw_of_leaves(self.leaves(block))
        missing = (binned == self.missing_bin).any(axis=1)
        if missing.any():
            out[missing] = walked_raw(self.clf, np.ascontiguousarray(binned[missing]))[:, 0]
        return out

    def leaves(self, block: np.ndarray) -> np.ndarray:
        """The leaf each row of ``block`` (binned, at most a few thousand rows) reaches in
        every tree, as indices into ``leaf_values.ravel()``: intp, shape (n_rows, n_trees).
        Tree ``t``'s leaf number, left to right, is the index less ``t * leaf_values.shape[1]``.
        Rows holding the missing-values bin get a meaningless leaf (``raw`` rescores them)."""
        n_rows = len(block)
        possible = None
        for group, table in zip(self.groups, self.tables):
            row = block[:, group[0][0]].astype(np.intp)
            for feature, n_bins in group[1:]:
                row *= n_bins
                row += block[:, feature]
            # "clip": a missing bin (255) may index past the table; raw() rescores such rows.
            if possible is None:
                possible = table.take(row, axis=0, mode="clip")
            else:
                possible &= table.take(row, axis=0, mode="clip")
        if possible is None:  # no tree splits at all: every row ends in leaf 0
            possible = np.ones((n_rows, self.n_trees), dtype=self.mask_dtype)
        # The lowest set bit is the leftmost possible leaf: p ^ (p - 1) sets it and every
        # bit below it, so its number is that count less one (folded into the offsets).
        below = possible - self.mask_dtype(1)
        below ^= possible
        return np.bitwise_count(below) + self.leaf_offsets

    def raw_of_leaves(self, leaf: np.ndarray) -> np.ndarray:
        """The raw score of rows whose leaves (``leaves``) are ``leaf``: shape (n_rows,)."""
        n_rows = len(leaf)
        # Summed down the first axis, tree after tree from the baseline: scikit-learn's order.
        values = np.empty((self.n_trees + 1, n_rows), dtype=np.float64)
        values[0] = self.baseline
        np.take(self.leaf_values, leaf.T, out=values[1:])
        return np.add.reduce(values, axis=0)
