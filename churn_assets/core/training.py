"""Time-based splits and model training, as pure functions of data frames."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn_assets.core.artifact import CALIBRATION_METHODS, ChurnPredictor, ScoreCalibrator
from churn_assets.core.encoding import encode_rows
from churn_assets.core.frame_pickle import frame_from_parquet, parquet_bytes
from churn_assets.core.metrics import best_f1_threshold, churn_metrics
from churn_assets.core.spec import LABEL, FeatureSpec

MODEL_FAMILIES = ("logistic_regression", "hist_gradient_boosting")
# Platt scaling on the validation weeks: bench/calibration.py measured it bringing the
# holdout ECE of the balanced-weight models from 0.1-0.3 to the noise floor of the
# holdout, leaving ROC AUC exactly as it was (it is strictly increasing), and it won
# the cross-validated validation log loss against isotonic regression, whose ties cost
# up to 0.005 ROC AUC (BENCHMARKS.md, "Calibration").
DEFAULT_CALIBRATION = "sigmoid"


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

    def boundaries(self, newest_final: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
        """``(train_start, validation_start, holdout_start)`` for the newest snapshot with a
        final label: the holdout is the ``holdout_weeks`` ending on its day, the training
        window the ``training_window_weeks`` before the holdout, validation its newest
        ``validation_weeks``."""
        holdout_start = newest_final.normalize() - pd.Timedelta(weeks=self.holdout_weeks) + pd.Timedelta(days=1)
        return (holdout_start - pd.Timedelta(weeks=self.training_window_weeks),
                holdout_start - pd.Timedelta(weeks=self.validation_weeks), holdout_start)


def label_cutoff(spec: FeatureSpec, as_of: pd.Timestamp) -> pd.Timestamp:
    """The newest snapshot date whose label is final at ``as_of``: a label says whether
    the customer churned within ``label_horizon_days`` after the snapshot."""
    return pd.Timestamp(as_of).normalize() - pd.Timedelta(days=spec.label_horizon_days)


@dataclass
class ModelingFrames:
    """Validated records cut by time. Each frame has the spec's columns plus ``_label``."""

    train: pd.DataFrame        # training window minus its newest validation weeks
    validation: pd.DataFrame   # newest weeks of the training window: model choice, threshold
    holdout: pd.DataFrame      # newest labelled weeks, never seen by training
    as_of: pd.Timestamp
    label_cutoff: pd.Timestamp  # snapshots after this have provisional labels
    held_back_rows: int         # rows left out because their label window is still open

    def __reduce__(self):
        # clean_features' output, loaded by every training step: as Parquet where that is
        # exact (core.frame_pickle), as protocol 4 would copy all three frames (2.1 GiB at
        # a 10 M-row window) while pickling them.
        packed = [parquet_bytes(f) for f in (self.train, self.validation, self.holdout)]
        rest = (self.as_of, self.label_cutoff, self.held_back_rows)
        if any(p is None for p in packed):
            return ModelingFrames, (self.train, self.validation, self.holdout, *rest)
        return _frames_from_parquet, (*packed, *rest)

    @property
    def training_window(self) -> pd.DataFrame:
        """train and validation in one frame (a copy of both)."""
        return pd.concat([self.train, self.validation], ignore_index=True)

    @property
    def training_rows(self) -> int:
        return len(self.train) + len(self.validation)

    def window(self, spec: FeatureSpec) -> dict:
        ts = spec.timestamp_column
        def span(frame):
            return [str(frame[ts].min().date()), str(frame[ts].max().date())] if len(frame) else None
        return {"train": span(self.train), "validation": span(self.validation),
                "holdout": span(self.holdout), "as_of": str(self.as_of.date()),
                "label_cutoff": str(self.label_cutoff.date())}


def _frames_from_parquet(train: bytes, validation: bytes, holdout: bytes, *rest) -> ModelingFrames:
    return ModelingFrames(frame_from_parquet(train), frame_from_parquet(validation),
                          frame_from_parquet(holdout), *rest)


class NotEnoughHistory(ValueError):
    """The history does not yet span the training, validation and holdout weeks."""


def split_by_time(records: pd.DataFrame, spec: FeatureSpec, plan: WindowPlan,
                  as_of: pd.Timestamp) -> ModelingFrames:
    """Cut validated records into train / validation / holdout by snapshot date.

    Snapshots newer than ``as_of - label_horizon_days`` are held back entirely: their
    labels can still change. Of the rest, the newest ``holdout_weeks`` form the holdout,
    and the ``training_window_weeks`` before them the training window, whose newest
    ``validation_weeks`` are the validation set.
    """
    ts = records[spec.timestamp_column]
    cutoff = label_cutoff(spec, as_of)
    final = records[ts <= cutoff]
    held_back = len(records) - len(final)
    if final.empty:
        raise NotEnoughHistory(f"no snapshot on or before the label cutoff {cutoff.date()}")
    newest = final[spec.timestamp_column].max().normalize()
    train_start, validation_start, holdout_start = plan.boundaries(newest)
    fts = final[spec.timestamp_column]
    frames = ModelingFrames(
        train=final[(fts >= train_start) & (fts < validation_start)].reset_index(drop=True),
        validation=final[(fts >= validation_start) & (fts < holdout_start)].reset_index(drop=True),
        holdout=final[fts >= holdout_start].reset_index(drop=True),
        as_of=as_of, label_cutoff=cutoff, held_back_rows=held_back,
    )
    for name in ("train", "validation", "holdout"):
        frame = getattr(frames, name)
        if frame.empty or frame[LABEL].nunique() < 2:
            raise NotEnoughHistory(
                f"the {name} weeks hold {len(frame)} labelled rows"
                f" ({'one class only' if len(frame) else 'none'}): need history from"
                f" {train_start.date()} to {newest.date()} with final labels"
            )
    return frames


def make_classifier(family: str, seed: int, class_weight: str | None = "balanced"):
    """An unfitted classifier of ``family``; by default it weighs the rare churn class up
    (its raw probabilities are then inflated: ``train_challenger`` calibrates them)."""
    if family == "logistic_regression":
        return LogisticRegression(C=1.0, class_weight=class_weight, max_iter=2000, random_state=seed)
    if family == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(
            learning_rate=0.06, max_iter=250, max_leaf_nodes=31, l2_regularization=1.0,
            class_weight=class_weight, early_stopping=False, random_state=seed,
        )
    raise ValueError(f"unknown model family {family!r}; choose from {list(MODEL_FAMILIES)}")


def training_fingerprint(frames: ModelingFrames, spec: FeatureSpec, families: list[str],
                         seed: int, code_version: str, calibration: str | None = DEFAULT_CALIBRATION) -> str:
    """Identifies what a model was trained from: same fingerprint, same model."""
    digest = hashlib.sha256()
    for frame in (frames.train, frames.validation):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(repr((spec.to_dict(), sorted(families), seed, code_version, calibration)).encode())
    return digest.hexdigest()


def purged_train(frames: ModelingFrames, spec: FeatureSpec) -> pd.DataFrame:
    """The train weeks without the snapshots that share a churn event with the validation weeks.

    A label means "churned within ``label_horizon_days`` after the snapshot", so one churn
    labels 1 every weekly snapshot of that customer in the horizon before it: rows on both
    sides of the train/validation boundary. A customer's static columns (age, seats,
    discount share, spend) identify them, so a model that can memorise customers (gradient
    boosting) scores them in validation from their own training labels. Measured on the
    simulator (BENCHMARKS.md, "Estimated vs realized"): boosting's validation ROC AUC was
    0.76-0.79 with that overlap and 0.73-0.74 without it, about the 0.74 it got on the weeks
    it later served, below logistic regression (0.75), which moved by 0.003 at most.
    Choosing the family, fitting the calibrator and tuning the threshold on the leaked
    scores deployed the boosted model, calibrated as if it ranked new weeks that well, and
    CBPE overshot by 0.03 on average (within 0.02 ROC AUC in 33% of weeks; now 92-100%).

    Dropped: snapshots dated after ``validation start - label_horizon_days`` of customers
    present in the validation weeks (label-free: ids and dates only). With a horizon of 0
    (Telco) nothing is dropped. If too little is left to fit on (no row or one class: a
    training window barely longer than validation + horizon), the train weeks are kept
    whole, leak included, rather than refusing to train.
    """
    keep = purge_mask(frames, spec)
    return frames.train if keep is None else frames.train[keep]


def purge_mask(frames: ModelingFrames, spec: FeatureSpec) -> np.ndarray | None:
    """Which train rows ``purged_train`` keeps, as a boolean array over ``frames.train``;
    None when it keeps them all."""
    train = frames.train
    if spec.label_horizon_days <= 0 or frames.validation.empty:
        return None
    ts = spec.timestamp_column
    start = frames.validation[ts].min().normalize()
    shares_event = ((train[ts] > start - pd.Timedelta(days=spec.label_horizon_days))
                    & train[spec.id_column].isin(frames.validation[spec.id_column])).to_numpy()
    if not shares_event.any():
        return None
    keep = ~shares_event
    return keep if np.unique(train[LABEL].to_numpy()[keep]).size == 2 else None


def train_challenger(frames: ModelingFrames, spec: FeatureSpec, preprocessor: Pipeline,
                     families: list[str], seed: int, code_version: str, trained_at: str,
                     calibration: str | None = DEFAULT_CALIBRATION,
                     ) -> tuple[ChurnPredictor, dict[str, dict[str, float]]]:
    """Fit each family on the purged train weeks (``purged_train``), keep the best on
    validation ROC AUC, refit it on the whole training window with the fitted
    ``preprocessor`` frozen.

    ``calibration`` ("sigmoid", "isotonic" or None): a calibrator is fitted on the
    validation weeks' decision values of the purged fit (rows that fit never saw and
    that share no churn event with its rows) and applied to the refit model, whose
    decision values are on nearly the same scale: same features, family and class
    weights, more and newer rows. The threshold is tuned (max F1) on the calibrated
    validation probabilities, so it is on the scale the predictor serves. Validation
    metrics are of calibrated probabilities; the calibrator was fitted on those rows,
    so their ECE is optimistic (the holdout's is not).

    Why refit rather than serve the purged fit itself: on the simulator the purged fit
    (half the rows at the default window) ranked later weeks 0.001-0.003 ROC AUC worse
    and varied more from one week's retrain to the next (0.011 apart on one holdout at
    1,000 customers, enough for the gate to refuse it); the cost of the refit is that
    the calibrator was fitted on a sibling model. For logistic regression that sibling
    has the same scale (CBPE within 0.02 ROC AUC in 92-100% of weeks); gradient
    boosting's scale moves with the row count (its purged-fit calibrator left the
    refit's estimates 0.013 low on average). BENCHMARKS.md, "Estimated vs realized".

    Returns the predictor and the validation metrics of every candidate.
    """
    if calibration is not None and calibration not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration {calibration!r}; choose from {[*CALIBRATION_METHODS, None]}")
    # The classifiers are fitted on feature matrices encoded chunk by chunk
    # (``encoding.encode_rows``: the values Pipeline.fit would compute, without its
    # intermediates), one matrix alive at a time; BENCHMARKS.md, "Big windows".
    keep = purge_mask(frames, spec)
    y_train, y_val = frames.train[LABEL].to_numpy(), frames.validation[LABEL].to_numpy()
    y_fit = y_train if keep is None else y_train[keep]
    x_fit = encode_rows(preprocessor, [frames.train], [keep])
    x_val = encode_rows(preprocessor, [frames.validation])
    candidates = {}
    for family in families:
        classifier = make_classifier(family, seed).fit(x_fit, y_fit)
        calibrator = None
        if calibration is None:
            proba = classifier.predict_proba(x_val)[:, 1]
        else:
            decision = classifier.decision_function(x_val)
            calibrator = ScoreCalibrator.fit(calibration, decision, y_val)
            proba = calibrator(decision)
        candidates[family] = (roc_auc_score(y_val, proba), proba, calibrator)
    del x_fit, x_val
    best = max(candidates, key=lambda f: candidates[f][0])
    thresholds = {f: best_f1_threshold(y_val, p) for f, (_, p, _) in candidates.items()}
    scores = {f: churn_metrics(y_val, p, thresholds[f]) for f, (_, p, _) in candidates.items()}
    x_window = encode_rows(preprocessor, [frames.train, frames.validation])
    y_window = np.concatenate([y_train, y_val])
    refit = make_classifier(best, seed).fit(x_window, y_window)
    del x_window
    final = Pipeline([("preprocess", FrozenEstimator(preprocessor)), ("classifier", refit)])
    predictor = ChurnPredictor(
        spec=spec, pipeline=final, threshold=thresholds[best], family=best,
        fingerprint=training_fingerprint(frames, spec, families, seed, code_version, calibration),
        data_window=frames.window(spec), validation_metrics=scores[best],
        trained_at=trained_at, code_version=code_version, calibrator=candidates[best][2],
    )
    return predictor, scores
