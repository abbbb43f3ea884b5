"""Static diagnostic plots as PNG bytes, drawn with matplotlib's object API.

Figures are built from ``matplotlib.figure.Figure`` directly, never ``pyplot``: pyplot
keeps global state (a current figure, a GUI backend), which is neither thread-safe in a
Dagster run with several workers nor safe on a headless machine. A bare ``Figure``
renders PNG through Agg without ever opening a window. Every function returns the
bytes of a ~6x4 in, 100 dpi PNG (tens of kB).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from sklearn import metrics as skm

DPI = 100
SIZE = (6.0, 4.0)
CHALLENGER, CHAMPION = "tab:blue", "tab:orange"
STATUS_COLORS = {"stable": "tab:green", "watch": "tab:orange", "act": "tab:red"}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/creation metadata, so the same figure gives the same bytes.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _empty(fig: Figure, ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown image with the PNG inlined as a base64 data URI (Dagster metadata renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _models(proba_challenger, proba_champion) -> list[tuple[str, np.ndarray, str]]:
    models = [("challenger", np.asarray(proba_challenger, dtype=float), CHALLENGER)]
    if proba_champion is not None:
        models.append(("champion", np.asarray(proba_champion, dtype=float), CHAMPION))
    return models


def roc_pr_curves(y_true, proba_challenger, proba_champion=None) -> bytes:
    """ROC curve (left) and precision-recall curve (right) on the same rows.

    ``y_true`` is 0/1 of shape (n,); probabilities are churn probabilities in [0, 1] of
    shape (n,). The champion, when given, must be scored on the same rows so the curves
    are comparable. Legends carry ROC AUC and PR AUC (average precision).
    """
    y = np.asarray(y_true, dtype=int)
    fig = Figure(figsize=(8.0, 3.8))
    roc_ax, pr_ax = fig.subplots(1, 2)
    if len(np.unique(y)) < 2:
        _empty(fig, roc_ax, "ROC undefined: one class only")
        _empty(fig, pr_ax, "PR undefined: one class only")
        return _png(fig)
    for name, proba, color in _models(proba_challenger, proba_champion):
        fpr, tpr, _ = skm.roc_curve(y, proba)
        roc_ax.plot(fpr, tpr, color=color, label=f"{name} (AUC {skm.roc_auc_score(y, proba):.3f})")
        precision, recall, _ = skm.precision_recall_curve(y, proba)
        pr_ax.plot(recall, precision, color=color, drawstyle="steps-post",
                   label=f"{name} (AP {skm.average_precision_score(y, proba):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    # A random ranking has precision equal to the churn rate at every recall.
    pr_ax.axhline(y.mean(), color="grey", linestyle=":", linewidth=1, label=f"base rate {y.mean():.3f}")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="lower right" if ax is roc_ax else "upper right", fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _calibration_points(y: np.ndarray, proba: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Equal-count bins: every point averages the same number of rows, so no point rests
    # on a handful of rows in a sparsely populated probability range.
    order = np.argsort(proba, kind="stable")
    chunks = [c for c in np.array_split(order, min(n_bins, len(order))) if len(c)]
    mean_pred = np.array([proba[c].mean() for c in chunks])
    observed = np.array([y[c].mean() for c in chunks])
    sizes = np.array([len(c) for c in chunks])
    return mean_pred, observed, sizes


def reliability_diagram(y_true, proba_challenger, proba_champion=None, n_bins: int = 10) -> bytes:
    """Observed churn rate against mean predicted probability in ``n_bins`` equal-count bins.

    Shapes (n,); probabilities in [0, 1]. The diagonal is perfect calibration; the legend
    gives the expected calibration error (row-weighted mean |observed - predicted|).
    A histogram of the predictions sits underneath on the same x axis.
    """
    y = np.asarray(y_true, dtype=float)
    fig = Figure(figsize=SIZE)
    curve_ax, hist_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    bins = np.linspace(0, 1, 41)
    for name, proba, color in _models(proba_challenger, proba_champion):
        if proba.size == 0:
            continue
        mean_pred, observed, sizes = _calibration_points(y, proba, n_bins)
        ece = float(np.sum(sizes * np.abs(observed - mean_pred)) / sizes.sum())
        curve_ax.plot(mean_pred, observed, marker="o", markersize=4, color=color, label=f"{name} (ECE {ece:.3f})")
        hist_ax.hist(np.clip(proba, 0, 1), bins=bins, color=color, alpha=0.5, label=name)
    curve_ax.set(ylabel="observed churn rate", title="Reliability (equal-count bins)", xlim=(0, 1), ylim=(0, 1))
    curve_ax.legend(loc="upper left", fontsize="small")
    curve_ax.grid(alpha=0.3)
    hist_ax.set(xlabel="predicted churn probability", ylabel="rows")
    fig.tight_layout()
    return _png(fig)


def confusion_matrix_plot(y_true, proba, threshold: float) -> bytes:
    """2x2 confusion matrix at ``proba >= threshold``, each cell with its count and row rate.

    Row rates are shares of the actual class (TNR/FPR on the first row, FNR/TPR on the
    second), so they read as error rates independent of the churn base rate.
    """
    y = np.asarray(y_true, dtype=int)
    predicted = (np.asarray(proba, dtype=float) >= threshold).astype(int)
    matrix = skm.confusion_matrix(y, predicted, labels=[0, 1])
    row_totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, row_totals, out=np.zeros_like(matrix, dtype=float), where=row_totals > 0)
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.subplots()
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = [["true negative", "false positive"], ["false negative", "true positive"]]
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{names[i][j]}\n{matrix[i, j]:,}\n{rates[i, j]:.1%} of actual",
                    ha="center", va="center", fontsize="small", color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], labels=["retained (0)", "churn (1)"])
    ax.set_yticks([0, 1], labels=["retained (0)", "churn (1)"])
    ax.set(xlabel="predicted", ylabel="actual")
    precision = matrix[1, 1] / max(matrix[:, 1].sum(), 1)
    ax.set_title(f"Threshold {threshold:.3f}: precision {precision:.3f}, recall {rates[1, 1]:.3f}", fontsize="medium")
    fig.tight_layout()
    return _png(fig)


def feature_importance_plot(importances: Sequence[tuple[str, float, float]], top: int = 15) -> bytes:
    """Horizontal bars of (feature, mean, std) importances, the ``top`` largest, largest on top.

    Units are whatever the importances are in, e.g. the mean drop in ROC AUC when the
    feature is permuted; the error bars are one standard deviation over repeats.
    """
    rows = sorted(importances, key=lambda r: r[1], reverse=True)[:top]
    fig = Figure(figsize=(6.0, max(2.5, 0.3 * len(rows) + 1.2)))
    ax = fig.subplots()
    if not rows:
        _empty(fig, ax, "no importances")
        return _png(fig)
    names, means, stds = zip(*[(str(n), float(m), float(s)) for n, m, s in rows[::-1]])
    ax.barh(names, means, xerr=stds, color=CHALLENGER, alpha=0.8, error_kw={"elinewidth": 1, "capsize": 2})
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="importance (score drop when permuted)", title=f"Feature importance (top {len(rows)})")
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _trend_label(point: dict, index: int) -> str:
    name = str(point.get("version", index))
    return f"{name}\n{point['as_of']}" if point.get("as_of") else name


def _shown_labels(points: Sequence[dict], most: int = 10) -> list[str]:
    """Tick labels "v0003\n2026-05-11" (version, data as of); past ``most`` points only
    every k-th is named, plus the production version and the newest, so none overlap."""
    step = max(1, math.ceil(len(points) / most))
    keep = {len(points) - 1} | {i for i, p in enumerate(points) if p.get("production")}
    for i in range(len(points)):  # then as many others as fit, at least ``step`` apart
        if all(abs(i - k) >= step for k in keep):
            keep.add(i)
    return [_trend_label(p, i) if i in keep else "" for i, p in enumerate(points)]


def metric_trend(points: Sequence[dict]) -> bytes:
    """Holdout ROC AUC by model version, in the order given (oldest first).

    Each point: ``version`` (str), ``roc_auc`` (float), ``role`` ("champion" or
    "challenger"), ``deployed`` (bool) and ``champion_roc_auc`` (float or None: the
    incumbent champion scored on the same holdout); optionally ``as_of`` (the data's
    date, shown under the version), ``production`` (bool: the version serving now,
    ringed) and ``rollbacks`` (versions production was rolled back to after this point,
    drawn as a dashed line). The champion line is the champion's AUC at each version
    (``champion_roc_auc``, or the point's own AUC when it is the champion); promoted
    versions are green dots, refused challengers red crosses.
    """
    fig = Figure(figsize=(SIZE[0] + 2.0, SIZE[1] + 0.6))  # the legend sits beside the axes
    ax = fig.subplots()
    if not points:
        _empty(fig, ax, "no model versions yet")
        return _png(fig)
    x = np.arange(len(points))
    auc = np.array([_number(p.get("roc_auc")) for p in points])
    champion = np.array([_number(p.get("champion_roc_auc")) if p.get("champion_roc_auc") is not None
                         else (_number(p.get("roc_auc")) if p.get("role") == "champion" else math.nan)
                         for p in points])
    known = ~np.isnan(champion)
    if known.any():
        # Only the known points are connected: a gap means no champion existed to compare with.
        ax.plot(x[known], champion[known], color=CHAMPION, marker="s", markersize=4,
                label="champion (same holdout)")
    promoted = np.array([bool(p.get("deployed")) or p.get("role") == "champion" for p in points])
    if promoted.any():
        ax.scatter(x[promoted], auc[promoted], color="tab:green", marker="o", zorder=3, label="promoted")
    if (~promoted).any():
        ax.scatter(x[~promoted], auc[~promoted], color="tab:red", marker="x", s=60, zorder=3,
                   label="challenger refused or held")
    serving = np.array([bool(p.get("production")) for p in points])
    if serving.any():
        ax.scatter(x[serving], auc[serving], s=260, facecolors="none", edgecolors="black", linewidths=1.5,
                   zorder=4, label="in production now")
    rolled = False
    for i, p in enumerate(points):
        for to in p.get("rollbacks") or ():
            ax.axvline(i + 0.5, color="dimgrey", linestyle="--", linewidth=1,
                       label=None if rolled else "rollback")
            ax.annotate(f"rollback to {to}", (i + 0.5, 0.98), xycoords=("data", "axes fraction"),
                        xytext=(3, 0), textcoords="offset points", rotation=90, fontsize="x-small",
                        color="dimgrey", va="top")
            rolled = True
    many = len(points) > 4
    ax.set_xticks(x, labels=_shown_labels(points), rotation=30 if many else 0,
                  ha="right" if many else "center", fontsize="small")
    # Room on the right for a rollback after the newest point.
    ax.set_xlim(-0.5, len(points) - 0.5 + (0.5 if points[-1].get("rollbacks") else 0))
    ax.set(xlabel="model version (data as of)", ylabel="holdout ROC AUC", title="ROC AUC by model version")
    # Beside the axes, never over a point.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def drift_bars(drifts: Sequence, watch: float = 0.1, act: float = 0.25, top: int = 20) -> bytes:
    """Horizontal bars of PSI by feature (objects with ``.feature`` and ``.psi``), largest on top.

    Bars are coloured by status; dashed lines mark the ``watch`` and ``act`` thresholds.
    Columns with undefined (NaN) PSI are left out.
    """
    rows = sorted([(str(d.feature), float(d.psi)) for d in drifts if d.psi is not None and not math.isnan(d.psi)],
                  key=lambda r: r[1], reverse=True)[:top]
    fig = Figure(figsize=(6.0, max(2.5, 0.3 * len(rows) + 1.2)))
    ax = fig.subplots()
    if not rows:
        _empty(fig, ax, "no drift measured")
        return _png(fig)
    names, values = zip(*rows[::-1])
    colors = [STATUS_COLORS["act" if v >= act else "watch" if v >= watch else "stable"] for v in values]
    ax.barh(names, values, color=colors)
    ax.axvline(watch, color=STATUS_COLORS["watch"], linestyle="--", linewidth=1, label=f"watch {watch:g}")
    ax.axvline(act, color=STATUS_COLORS["act"], linestyle="--", linewidth=1, label=f"act {act:g}")
    ax.set(xlabel="PSI", title="Drift (population stability index)", xlim=(0, max(max(values), act) * 1.1))
    ax.tick_params(axis="y", labelsize="small")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def realized_performance_trend(points: Sequence[dict]) -> bytes:
    """Realized ROC AUC of the production model per scoring week, against its deploy-time AUC.

    Each point: ``week`` (ISO date str), ``version`` (str), ``realized_roc_auc`` (float
    or None while labels are still maturing), ``deploy_roc_auc`` (the holdout AUC the
    version was promoted on) and optionally ``estimated_roc_auc`` with
    ``estimated_low``/``estimated_high`` (an interval, drawn as a band). A dotted
    vertical line marks each change of production version.
    """
    fig = Figure(figsize=(SIZE[0] + 1.8, SIZE[1]))  # room for the legend beside the axes
    ax = fig.subplots()
    if not points:
        _empty(fig, ax, "no scored weeks yet")
        return _png(fig)
    frame = pd.DataFrame(list(points)).sort_values("week", kind="stable").reset_index(drop=True)
    weeks = pd.to_datetime(frame["week"]).to_numpy()

    def column(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)

    realized, deployed, estimated = column("realized_roc_auc"), column("deploy_roc_auc"), column("estimated_roc_auc")
    low, high = column("estimated_low"), column("estimated_high")
    ax.plot(weeks, deployed, color="grey", linestyle="--", drawstyle="steps-post", label="AUC at deploy")
    band = ~np.isnan(low) & ~np.isnan(high)
    if band.any():
        ax.fill_between(weeks, low, high, where=band, color=CHALLENGER, alpha=0.15, label="estimate interval")
    if not np.isnan(estimated).all():
        ax.plot(weeks, estimated, color=CHALLENGER, linestyle=":", marker=".", label="estimated AUC")
    ax.plot(weeks, realized, color=CHALLENGER, marker="o", markersize=4, label="realized AUC")
    versions = frame["version"].astype(str).tolist() if "version" in frame else [""] * len(frame)
    for i in range(len(versions)):
        if i == 0 or versions[i] != versions[i - 1]:
            ax.axvline(weeks[i], color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(versions[i], (weeks[i], 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize="x-small", color="dimgrey")
    if len(weeks) == 1:
        # A zero-width date range leaves the date locator nothing to pick ticks from.
        ax.set_xlim(weeks[0] - np.timedelta64(4, "D"), weeks[0] + np.timedelta64(4, "D"))
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set(xlabel="scoring week", ylabel="ROC AUC", title="Production model: realized vs deploy-time AUC")
    # Beside the axes, never over them: realized points sit low when a model decays.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
