"""Model training, as pure functions of the time-cut frames (``core.windows``).

``train_challenger`` makes two fits of one recipe. The **evaluated fit** learns the train
weeks; its family, calibrator and threshold are chosen on the validation weeks, and it
alone is scored on the holdout, which none of its rows shares a churn event with. The
**deployed fit** is the same family with the same settings on the same number of weeks,
the newest with final labels; it is what serves. It shares the evaluated fit's
calibrator and threshold: same family, same number of weeks, so the same scale of
decision values, and the same gap of one label horizon between its last training row
and the first week it scores. The backtest (``health.backtest``) measures what that
costs or gains (BENCHMARKS.md, "Backtest").
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline

from churn_assets.core.artifact import CALIBRATION_METHODS, CalibrationSample, ChurnPredictor, ScoreCalibrator
from churn_assets.core.encoding import encode_rows
from churn_assets.core.metrics import best_f1_threshold, churn_metrics
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.windows import (  # noqa: F401 - re-exported: the split's public home was here
    FRAME_NAMES, ModelingFrames, NotEnoughHistory, WindowBounds, WindowPlan, label_cutoff, split_by_time)

MODEL_FAMILIES = ("logistic_regression", "hist_gradient_boosting")
# "auto": the calibrator (Platt, isotonic or none) with the lowest validation log loss,
# cross-validated over customers (choose_calibration).
DEFAULT_CALIBRATION = "auto"
CALIBRATION_CHOICES = (*CALIBRATION_METHODS, "none")
CALIBRATION_FOLDS = 5


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
    """Identifies what a model was trained from: same fingerprint, same model. Every
    labelled frame counts: the deployed fit learns the holdout weeks too."""
    digest = hashlib.sha256()
    for frame in frames.frames:
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(repr((spec.to_dict(), sorted(families), seed, code_version, calibration,
                        None if frames.serving_start is None else str(frames.serving_start))).encode())
    return digest.hexdigest()


def customer_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) of each row, shape (n,): every row of a customer in one fold."""
    codes, uniques = pd.factorize(np.asarray(groups, dtype=object), use_na_sentinel=False)
    order = np.random.default_rng(seed).permutation(len(uniques))
    return (order % folds)[codes]


def choose_calibration(decision: np.ndarray, raw_proba: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       seed: int = 0) -> tuple[str, dict[str, float]]:
    """The calibration with the lowest out-of-fold log loss on the validation weeks.

    ``decision``: the evaluated fit's decision values, ``raw_proba`` its own (class-weighted)
    probabilities, ``y`` labels, ``groups`` customer ids, all shape (n,). Platt and isotonic
    maps are fitted on four customer folds and scored on the fifth; "none" scores the raw
    probabilities. Returns (choice, mean log loss by choice). With fewer than
    ``CALIBRATION_FOLDS`` customers or one class in a fold, Platt scaling is kept.
    """
    fold = customer_folds(groups, CALIBRATION_FOLDS, seed)
    losses = {"none": float(log_loss(y, np.clip(raw_proba, 1e-15, 1 - 1e-15), labels=[0, 1]))}
    for method in CALIBRATION_METHODS:
        predicted = np.empty(len(y))
        for k in range(CALIBRATION_FOLDS):
            fit, test = fold != k, fold == k
            if not test.any() or np.unique(y[fit]).size < 2:
                return "sigmoid", {}
            predicted[test] = ScoreCalibrator.fit(method, decision[fit], y[fit])(decision[test])
        losses[method] = float(log_loss(y, np.clip(predicted, 1e-15, 1 - 1e-15), labels=[0, 1]))
    return min(losses, key=losses.get), losses


def _calibrated(classifier, x_val: np.ndarray, y_val: np.ndarray, groups: np.ndarray, calibration: str,
                seed: int) -> tuple[np.ndarray, np.ndarray, ScoreCalibrator | None, str, dict]:
    """(decision values, calibrated validation probabilities, calibrator, method, losses)."""
    decision = classifier.decision_function(x_val)
    raw = classifier.predict_proba(x_val)[:, 1]
    losses: dict[str, float] = {}
    method = calibration
    if calibration == "auto":
        method, losses = choose_calibration(decision, raw, y_val, groups, seed)
    if method == "none":
        return decision, raw, None, method, losses
    calibrator = ScoreCalibrator.fit(method, decision, y_val)
    if not calibrator.increasing:
        # The evaluated fit ranks validation the wrong way round (a changed market). Its
        # map would invert the deployed fit's ranking, learned on newer weeks: keep the
        # classifier's own probabilities instead, and say so.
        return decision, raw, None, "none (the evaluated fit does not rank the validation weeks)", losses
    return decision, calibrator(decision), calibrator, method, losses


def train_challenger(frames: ModelingFrames, spec: FeatureSpec, preprocessor: Pipeline,
                     families: list[str], seed: int, code_version: str, trained_at: str,
                     calibration: str | None = DEFAULT_CALIBRATION,
                     ) -> tuple[ChurnPredictor, dict[str, dict[str, float]]]:
    """The deployed fit of the best family, carrying its evaluated fit (module docstring).

    1. Each family is fitted on the train weeks (the evaluated fit), with the fitted
       ``preprocessor`` frozen in front of it.
    2. On the validation weeks: its calibration (``calibration``: "auto" chooses Platt,
       isotonic or none by cross-validated log loss; "sigmoid", "isotonic", or
       None/"none" forces one), its ROC AUC, its F1-best threshold on the calibrated
       scale. The family with the best validation ROC AUC wins.
    3. That family is fitted again on the serving window (``ModelingFrames.serving_masks``),
       with the same calibrator and threshold: the model that serves.

    Returns the deployed ``ChurnPredictor`` (its ``evaluated`` holds the evaluated fit) and
    the validation metrics of every candidate family.
    """
    calibration = "none" if calibration is None else calibration
    if calibration not in (*CALIBRATION_CHOICES, "auto"):
        raise ValueError(f"unknown calibration {calibration!r}; choose from {['auto', *CALIBRATION_METHODS, None]}")
    # Classifiers are fitted on matrices encoded chunk by chunk (``encoding.encode_rows``:
    # the values Pipeline.fit would compute, without its intermediates), one matrix
    # alive at a time; BENCHMARKS.md, "Big windows".
    y_fit, y_val = frames.train[LABEL].to_numpy(), frames.validation[LABEL].to_numpy()
    groups = frames.validation[spec.id_column].to_numpy()
    x_fit = encode_rows(preprocessor, [frames.train])
    x_val = encode_rows(preprocessor, [frames.validation])
    candidates = {}
    for family in families:
        classifier = make_classifier(family, seed).fit(x_fit, y_fit)
        decision, proba, calibrator, method, losses = _calibrated(classifier, x_val, y_val, groups,
                                                                  calibration, seed)
        candidates[family] = {"classifier": classifier, "auc": roc_auc_score(y_val, proba), "proba": proba,
                              "calibrator": calibrator, "method": method, "losses": losses,
                              "decision": decision}
    del x_fit, x_val
    best = max(candidates, key=lambda f: candidates[f]["auc"])
    thresholds = {f: best_f1_threshold(y_val, c["proba"]) for f, c in candidates.items()}
    scores = {f: {**churn_metrics(y_val, c["proba"], thresholds[f]), "calibration": c["method"]}
              for f, c in candidates.items()}
    chosen = candidates[best]
    # The label-free estimate reads probabilities through a calibrator of its own, fitted
    # on every out-of-time week the evaluated fit has labels for (validation and holdout):
    # twice the rows of the served calibrator, which must leave the holdout to judge it.
    held = chosen["classifier"].decision_function(encode_rows(preprocessor, [frames.holdout]))
    sample = CalibrationSample.of(np.concatenate([chosen["decision"], held]),
                                  np.concatenate([y_val, frames.holdout[LABEL].to_numpy()]),
                                  np.concatenate([groups, frames.holdout[spec.id_column].to_numpy()]), seed=seed)
    masks = frames.serving_masks(spec)
    x_serving = encode_rows(preprocessor, frames.frames, masks)
    y_serving = np.concatenate([f[LABEL].to_numpy() if m is None else f[LABEL].to_numpy()[m]
                                for f, m in zip(frames.frames, masks)])
    deployed = make_classifier(best, seed).fit(x_serving, y_serving)
    del x_serving
    frozen = FrozenEstimator(preprocessor)
    shared = dict(spec=spec, threshold=thresholds[best], family=best,
                  fingerprint=training_fingerprint(frames, spec, families, seed, code_version, calibration),
                  data_window=frames.window(spec), validation_metrics=scores[best],
                  trained_at=trained_at, code_version=code_version, calibrator=chosen["calibrator"])
    evaluated = ChurnPredictor(pipeline=Pipeline([("preprocess", frozen), ("classifier", chosen["classifier"])]),
                               **shared)
    predictor = ChurnPredictor(
        pipeline=Pipeline([("preprocess", frozen), ("classifier", deployed)]), **shared,
        evaluated=evaluated,
        calibration_sample=sample,
        calibration_losses=chosen["losses"])
    return predictor, scores


def prior_shift(predictor: ChurnPredictor, rows: pd.DataFrame) -> tuple[ChurnPredictor, float]:
    """The deployed fit with its calibrator moved so that the evaluated fit's mean
    probability on ``rows`` (labelled: the holdout, the newest matured weeks) equals their
    churn rate: a correction for a churn rate that moved since the validation weeks.
    Returns (predictor, the log-odds shift); unchanged without a calibrator.

    An option the backtest measures (``BacktestPlan.prior_shift``), not a default: it is
    adopted only where it helps (BENCHMARKS.md, "Backtest").
    """
    import dataclasses

    from scipy.optimize import brentq

    if predictor.calibrator is None or rows.empty:
        return predictor, 0.0
    decision = predictor.evaluated_fit.pipeline.decision_function(rows)
    target = float(rows[LABEL].mean())
    if not 0 < target < 1:
        return predictor, 0.0

    def gap(delta: float) -> float:
        return float(predictor.calibrator.shifted(delta)(decision).mean()) - target

    delta = brentq(gap, -5.0, 5.0) if gap(-5.0) < 0 < gap(5.0) else 0.0
    calibrator = predictor.calibrator.shifted(delta)
    evaluated = dataclasses.replace(predictor.evaluated_fit, calibrator=calibrator)
    return dataclasses.replace(predictor, calibrator=calibrator, evaluated=evaluated), float(delta)
