"""How labelled history is cut by time into the fits, the validation and the holdout.

A label means "churned within H days (the label horizon) after the snapshot", so one
churn labels every snapshot of that customer in the H days before it. Two rows share
label information exactly when their label windows overlap, and a model that can
memorise a customer (the static columns identify them) then scores that customer's
later rows from its own training labels. Every cut below keeps such pairs apart.

With ``N`` the newest snapshot whose label is final, ``W`` / ``V`` / ``O`` the training
window, validation and holdout weeks (``WindowPlan``), and ``fit = W - V`` weeks::

    holdout      the O weeks ending on N: the gate's evidence
    validation   the V weeks before them: model family, calibrator, threshold
    embargo      the H days before the first validation snapshot: used by no evaluated
                 fit, since their labels reach into the validation weeks
    train        the ``fit`` weeks before the embargo: the evaluated fit
    serving      the newest ``fit`` weeks, ending on N: the fit that is deployed

The evaluated fit is scored on weeks at least H days after its last training snapshot,
and the deployed fit serves weeks at least H days after its own (the risk list scores
snapshots from ``as_of = label cutoff + H`` on): the same gap, the same number of
weeks, so the holdout predicts what the deployed fit will do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churn_assets.core.frame_pickle import frame_from_parquet, parquet_bytes
from churn_assets.core.spec import LABEL, FeatureSpec

DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class WindowPlan:
    """How history is cut into training, validation and holdout (in weeks)."""

    training_window_weeks: int = 12
    validation_weeks: int = 2
    holdout_weeks: int = 2

    def __post_init__(self) -> None:
        if self.training_window_weeks <= self.validation_weeks:
            raise ValueError("training_window_weeks must exceed validation_weeks")
        if self.validation_weeks < 1 or self.holdout_weeks < 1:
            raise ValueError("validation_weeks and holdout_weeks must be at least 1")

    @property
    def fit_weeks(self) -> int:
        """Weeks each fit trains on: the training window less its validation weeks."""
        return self.training_window_weeks - self.validation_weeks

    def bounds(self, final_dates: pd.Series, horizon_days: int) -> WindowBounds:
        """The cut for snapshot dates ``final_dates`` (those with final labels; at least one).

        The embargo ends at the first validation snapshot actually present, so weekly
        snapshots lose exactly the H days whose labels reach it, not a day more.
        """
        dates = pd.to_datetime(final_dates).dt.normalize()
        newest = dates.max()
        holdout_start = newest - pd.Timedelta(weeks=self.holdout_weeks) + DAY
        validation_start = holdout_start - pd.Timedelta(weeks=self.validation_weeks)
        in_validation = dates[(dates >= validation_start) & (dates < holdout_start)]
        first_validation = in_validation.min() if len(in_validation) else validation_start
        # A train row t shares a label window with a validation row s >= first_validation
        # iff t + H > s, so train keeps t <= first_validation - H.
        train_end = min(validation_start, first_validation - pd.Timedelta(days=horizon_days) + DAY)
        fit = pd.Timedelta(weeks=self.fit_weeks)
        return WindowBounds(train_start=train_end - fit, train_end=train_end,
                            validation_start=validation_start, holdout_start=holdout_start,
                            newest=newest, serving_start=newest - fit + DAY)


@dataclass(frozen=True)
class WindowBounds:
    """Snapshot-day boundaries of one cut; each frame is ``[start, next start)``.

    ``train`` = [train_start, train_end), ``embargo`` = [train_end, validation_start),
    ``validation`` = [validation_start, holdout_start), ``holdout`` = [holdout_start,
    newest]; the deployed fit's rows are [serving_start, newest].
    """

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    validation_start: pd.Timestamp
    holdout_start: pd.Timestamp
    newest: pd.Timestamp
    serving_start: pd.Timestamp

    @property
    def oldest_needed(self) -> pd.Timestamp:
        return min(self.train_start, self.serving_start)


def label_cutoff(spec: FeatureSpec, as_of: pd.Timestamp) -> pd.Timestamp:
    """The newest snapshot date whose label is final at ``as_of``: a label says whether
    the customer churned within ``label_horizon_days`` after the snapshot."""
    return pd.Timestamp(as_of).normalize() - pd.Timedelta(days=spec.label_horizon_days)


class NotEnoughHistory(ValueError):
    """The history does not yet span the training, validation and holdout weeks."""


FRAME_NAMES = ("train", "embargo", "validation", "holdout")


@dataclass
class ModelingFrames:
    """Validated records cut by time (``WindowPlan.bounds``). Each frame has the spec's
    columns plus ``_label``.

    ``embargo``: the rows between train and validation (no evaluated fit sees them; the
    deployed fit does). ``serving_start``: the first snapshot day of the deployed fit's
    rows; None (frames built by hand) means every row of the four frames.
    """

    train: pd.DataFrame        # the evaluated fit's weeks
    validation: pd.DataFrame   # family choice, calibrator, threshold
    holdout: pd.DataFrame      # newest labelled weeks: the gate's evidence
    as_of: pd.Timestamp
    label_cutoff: pd.Timestamp  # snapshots after this have provisional labels
    held_back_rows: int         # rows left out because their label window is still open
    embargo: pd.DataFrame | None = None
    serving_start: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        if self.embargo is None:
            self.embargo = self.train.iloc[:0]

    def __reduce__(self):
        # clean_features' output, loaded by every training step: as Parquet where that is
        # exact (core.frame_pickle), as protocol 4 would copy every frame (2.1 GiB at
        # a 10 M-row window) while pickling them.
        frames = [getattr(self, name) for name in FRAME_NAMES]
        packed = [parquet_bytes(f) for f in frames]
        rest = (self.as_of, self.label_cutoff, self.held_back_rows, self.serving_start)
        if any(p is None for p in packed):
            return _frames_from_objects, (*frames, *rest)
        return _frames_from_parquet, (*packed, *rest)

    @property
    def frames(self) -> list[pd.DataFrame]:
        """train, embargo, validation, holdout: every labelled row, oldest first."""
        return [getattr(self, name) for name in FRAME_NAMES]

    @property
    def training_window(self) -> pd.DataFrame:
        """train and validation in one frame (a copy of both): what preprocessing is fitted on."""
        return pd.concat([self.train, self.validation], ignore_index=True)

    @property
    def training_rows(self) -> int:
        return len(self.train) + len(self.validation)

    def serving_masks(self, spec: FeatureSpec) -> list[np.ndarray | None]:
        """Per frame of ``frames``, which rows the deployed fit trains on (None: all)."""
        if self.serving_start is None:
            return [None] * len(FRAME_NAMES)
        ts = spec.timestamp_column
        return [None if not len(f) or f[ts].min() >= self.serving_start
                else (f[ts] >= self.serving_start).to_numpy() for f in self.frames]

    def serving_rows(self, spec: FeatureSpec) -> int:
        return sum(len(f) if m is None else int(m.sum()) for f, m in zip(self.frames, self.serving_masks(spec)))

    def window(self, spec: FeatureSpec) -> dict:
        ts = spec.timestamp_column

        def span(frame):
            return [str(frame[ts].min().date()), str(frame[ts].max().date())] if len(frame) else None

        newest = max((f[ts].max() for f in self.frames if len(f)), default=None)
        serving_from = self.serving_start if self.serving_start is not None else \
            min((f[ts].min() for f in self.frames if len(f)), default=None)
        return {"train": span(self.train), "embargo": span(self.embargo),
                "validation": span(self.validation), "holdout": span(self.holdout),
                "serving": None if newest is None else [str(pd.Timestamp(serving_from).date()),
                                                        str(newest.date())],
                "label_horizon_days": spec.label_horizon_days,
                "as_of": str(self.as_of.date()), "label_cutoff": str(self.label_cutoff.date())}


def _frames_from_parquet(train: bytes, embargo: bytes, validation: bytes, holdout: bytes, *rest) -> ModelingFrames:
    return _frames_from_objects(*(frame_from_parquet(b) for b in (train, embargo, validation, holdout)), *rest)


def _frames_from_objects(train, embargo, validation, holdout, as_of, cutoff, held_back, serving_start):
    return ModelingFrames(train, validation, holdout, as_of, cutoff, held_back, embargo, serving_start)


def check_frames(frames: ModelingFrames, bounds: WindowBounds) -> None:
    """Refuse a cut with an empty or one-class train, validation or holdout."""
    for name in ("train", "validation", "holdout"):
        frame = getattr(frames, name)
        if frame.empty or frame[LABEL].nunique() < 2:
            raise NotEnoughHistory(
                f"the {name} weeks hold {len(frame)} labelled rows"
                f" ({'one class only' if len(frame) else 'none'}): need history from"
                f" {bounds.train_start.date()} to {bounds.newest.date()} with final labels"
            )


def split_by_time(records: pd.DataFrame, spec: FeatureSpec, plan: WindowPlan,
                  as_of: pd.Timestamp) -> ModelingFrames:
    """Cut validated records (with ``_label``) by snapshot date (module docstring).

    Snapshots newer than ``as_of - label_horizon_days`` are held back entirely: their
    labels can still change.
    """
    ts = pd.to_datetime(records[spec.timestamp_column])
    cutoff = label_cutoff(spec, as_of)
    final = records[ts <= cutoff]
    held_back = len(records) - len(final)
    if final.empty:
        raise NotEnoughHistory(f"no snapshot on or before the label cutoff {cutoff.date()}")
    fts = pd.to_datetime(final[spec.timestamp_column])
    bounds = plan.bounds(fts, spec.label_horizon_days)
    day = fts.dt.normalize()

    def cut(lo, hi=None):
        rows = (day >= lo) if hi is None else (day >= lo) & (day < hi)
        return final[rows.to_numpy()].reset_index(drop=True)

    frames = ModelingFrames(
        train=cut(bounds.train_start, bounds.train_end),
        validation=cut(bounds.validation_start, bounds.holdout_start),
        holdout=cut(bounds.holdout_start),
        as_of=pd.Timestamp(as_of), label_cutoff=cutoff, held_back_rows=held_back,
        embargo=cut(bounds.train_end, bounds.validation_start), serving_start=bounds.serving_start,
    )
    check_frames(frames, bounds)
    return frames
