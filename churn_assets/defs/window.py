"""Which part of the customer history a refresh reads: the trailing window, not the past."""

from __future__ import annotations

import pandas as pd

from churn_assets.core.spec import LABEL, FeatureSpec, churn_label
from churn_assets.core.windows import (ModelingFrames, WindowPlan, check_frames, label_cutoff,
                                       split_by_time)
from churn_assets.storage.history import CustomerHistory

MARGIN_WEEKS = 1


def window_start(spec: FeatureSpec, plan: WindowPlan, as_of: pd.Timestamp) -> pd.Timestamp:
    """The oldest snapshot date ``split_by_time`` can use when the history is current:
    ``as_of - label horizon - (training + holdout weeks) - label horizon - 1 week`` (the
    train weeks sit one label horizon before validation; the margin covers a newest
    labelled snapshot up to a week before the label cutoff)."""
    return label_cutoff(spec, as_of) - pd.Timedelta(
        weeks=plan.training_window_weeks + plan.holdout_weeks + MARGIN_WEEKS,
        days=spec.label_horizon_days)


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
    dates = pd.to_datetime(frame[spec.timestamp_column])
    final = dates[dates <= label_cutoff(spec, as_of)]
    if final.empty:
        return history.load()
    oldest = plan.bounds(final, spec.label_horizon_days).oldest_needed
    return frame if oldest >= since else history.load()


def load_modeling_frames(history: CustomerHistory, spec: FeatureSpec, plan: WindowPlan,
                         as_of: pd.Timestamp) -> ModelingFrames | None:
    """``split_by_time`` of ``load_training_history`` with labels: the same frames, rows
    and order, read a split at a time. None when nothing is stored; raises
    ``NotEnoughHistory`` as ``split_by_time`` does.

    Reading the window and then splitting it held the window, its labelled part and the
    splits at once: 10.25 GiB for a 15.6 M-row first refresh, and the peak of the weekly
    refresh (BENCHMARKS.md, "History at scale"). Here the dates of the window are read
    first (the boundaries and the held-back count need nothing else), then each split
    from its own weeks: a split read alone and sorted by (customer, date) is the split
    cut from the sorted window.
    """
    as_of = pd.Timestamp(as_of)
    ts = spec.timestamp_column
    since = window_start(spec, plan, as_of)
    cutoff = label_cutoff(spec, as_of)
    dates = history.load(since=since, columns=[ts])
    if dates is None:
        return None
    dates = pd.to_datetime(dates[ts])
    final = dates[dates <= cutoff]
    bounds = plan.bounds(final, spec.label_horizon_days) if not final.empty else None
    if bounds is None or bounds.oldest_needed < since:
        # A gap in the history: the window reaches behind the read (load_training_history).
        return _split_whole(history, spec, plan, as_of)
    held_back = int((dates > cutoff).sum())
    del dates, final

    def split(lo: pd.Timestamp, before: pd.Timestamp | None) -> pd.DataFrame:
        # ``load`` bounds are inclusive: read up to ``before`` and drop rows dated on or
        # after it (they belong to the next split), copying only if there are any.
        frame = history.load(since=lo, until=cutoff if before is None else before)
        if before is not None and (pd.to_datetime(frame[ts]).dt.normalize() >= before).any():
            frame = frame[(pd.to_datetime(frame[ts]).dt.normalize() < before).to_numpy()].reset_index(drop=True)
        frame[LABEL] = churn_label(frame[spec.target_column], spec)
        return frame

    frames = ModelingFrames(
        train=split(bounds.train_start, bounds.train_end),
        validation=split(bounds.validation_start, bounds.holdout_start),
        holdout=split(bounds.holdout_start, None), as_of=as_of, label_cutoff=cutoff,
        held_back_rows=held_back, embargo=split(bounds.train_end, bounds.validation_start),
        serving_start=bounds.serving_start)
    try:
        check_frames(frames, bounds)
    except ValueError:
        # split_by_time words this refusal; it is rare, so let it say it.
        return _split_whole(history, spec, plan, as_of)
    return frames


def _split_whole(history: CustomerHistory, spec: FeatureSpec, plan: WindowPlan,
                 as_of: pd.Timestamp) -> ModelingFrames:
    stored = load_training_history(history, spec, plan, as_of)
    stored[LABEL] = churn_label(stored[spec.target_column], spec)
    return split_by_time(stored, spec, plan, as_of)
