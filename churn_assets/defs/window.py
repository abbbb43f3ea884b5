"""Which part of the customer history a refresh reads: the trailing window, not the past."""

from __future__ import annotations

import pandas as pd

from churn_assets.core.spec import FeatureSpec
from churn_assets.core.training import WindowPlan
from churn_assets.storage.history import CustomerHistory

MARGIN_WEEKS = 1


def window_start(spec: FeatureSpec, plan: WindowPlan, as_of: pd.Timestamp) -> pd.Timestamp:
    """The oldest snapshot date ``split_by_time`` can use when the history is current:
    ``as_of - label horizon - (training + holdout weeks) - 1 week`` (the margin covers a
    newest labelled snapshot up to a week before the label cutoff)."""
    label_cutoff = pd.Timestamp(as_of).normalize() - pd.Timedelta(days=spec.label_horizon_days)
    return label_cutoff - pd.Timedelta(
        weeks=plan.training_window_weeks + plan.holdout_weeks + MARGIN_WEEKS)


def load_training_history(history: CustomerHistory, spec: FeatureSpec, plan: WindowPlan,
                          as_of: pd.Timestamp) -> pd.DataFrame | None:
    """The stored rows ``split_by_time(..., plan, as_of)`` needs, giving the same splits
    as the whole history: the weeks from ``window_start`` on.

    If the history has a gap (its newest labelled snapshot is older than the margin
    allows, or there is none in those weeks), the window reaches further back than
    the read, so the whole history is read instead: identical splits in every case.
    """
    since = window_start(spec, plan, as_of)
    frame = history.load(since=since)
    if frame is None:
        return None
    label_cutoff = pd.Timestamp(as_of).normalize() - pd.Timedelta(days=spec.label_horizon_days)
    dates = pd.to_datetime(frame[spec.timestamp_column])
    final = dates[dates <= label_cutoff]
    if final.empty:
        return history.load()
    # The same arithmetic as split_by_time: its training window starts here.
    holdout_start = final.max().normalize() - pd.Timedelta(weeks=plan.holdout_weeks) + pd.Timedelta(days=1)
    train_start = holdout_start - pd.Timedelta(weeks=plan.training_window_weeks)
    return frame if train_start >= since else history.load()
