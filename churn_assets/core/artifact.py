"""The deployable artifact: one object mapping raw customer records to churn probability."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from churn_assets.core.spec import FeatureSpec

CALIBRATION_METHODS = ("sigmoid", "isotonic")


@dataclass(frozen=True)
class ScoreCalibrator:
    """Maps the classifier's decision value to a calibrated P(churn).

    The decision value is ``Pipeline.decision_function`` of the fitted pipeline, shape
    (n,): log-odds for LogisticRegression, the raw boosted score for
    HistGradientBoostingClassifier (both before any class weighting is undone).

    ``method`` "sigmoid" (Platt scaling): ``model`` is an unpenalized LogisticRegression
    fitted on the decision value as its one feature, so P = expit(a * f + b); strictly
    increasing, so every ranking metric (ROC AUC, PR AUC) is unchanged. "isotonic":
    ``model`` is an IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1), a
    non-decreasing step-and-ramp function; its flat steps tie scores.
    """

    method: str
    model: LogisticRegression | IsotonicRegression

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose from {list(CALIBRATION_METHODS)}")

    @classmethod
    def fit(cls, method: str, decision: np.ndarray, y_true: np.ndarray) -> ScoreCalibrator:
        """Fit on decision values ``decision`` (shape (n,)) and their 0/1 labels ``y_true``."""
        decision = np.asarray(decision, dtype=float)
        if method == "sigmoid":
            model = LogisticRegression(C=np.inf, max_iter=1000).fit(decision[:, None], y_true)
        elif method == "isotonic":
            model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(decision, y_true)
        else:
            raise ValueError(f"unknown calibration method {method!r}; choose from {list(CALIBRATION_METHODS)}")
        return cls(method, model)

    def __call__(self, decision: np.ndarray) -> np.ndarray:
        """Calibrated P(churn), shape (n,), of decision values of shape (n,)."""
        decision = np.asarray(decision, dtype=float)
        if self.method == "sigmoid":
            return self.model.predict_proba(decision[:, None])[:, 1]
        return self.model.predict(decision)


@dataclass
class ChurnPredictor:
    """A trained churn model with the exact preprocessing it was trained with.

    ``pipeline`` is a scikit-learn Pipeline with steps ``preprocess`` (the fitted
    normalize -> impute/one-hot/scale pipeline from ``features.build_preprocessor``,
    wrapped in ``FrozenEstimator``) and ``classifier`` (LogisticRegression or
    HistGradientBoostingClassifier). ``calibrator``: maps the pipeline's decision value
    to a calibrated probability (None: the classifier's own ``predict_proba``, as
    artifacts trained before calibration have). ``threshold`` is the probability, on
    the scale ``predict_proba`` returns, at or above which a customer is labelled a
    churner, tuned on the validation weeks.
    """

    spec: FeatureSpec
    pipeline: Pipeline
    threshold: float
    family: str
    fingerprint: str
    data_window: dict = field(default_factory=dict)
    validation_metrics: dict = field(default_factory=dict)
    trained_at: str = ""
    code_version: str = ""
    # Last, with a default, so artifacts pickled before it existed load with None
    # (unpickling restores __dict__ only; the class attribute supplies the default).
    calibrator: ScoreCalibrator | None = None

    def predict_proba(self, records: pd.DataFrame) -> np.ndarray:
        """P(churn) for each row of ``records`` (raw records, spec columns): shape (n_rows,)."""
        if self.calibrator is None:
            return self.pipeline.predict_proba(records)[:, 1]
        return self.calibrator(self.pipeline.decision_function(records))

    def predict(self, records: pd.DataFrame) -> np.ndarray:
        """1 where P(churn) >= threshold, else 0: shape (n_rows,)."""
        return (self.predict_proba(records) >= self.threshold).astype(int)

    @property
    def preprocessor(self) -> Pipeline:
        """The fitted preprocessing pipeline (``normalize`` then ``columns``)."""
        return self.pipeline.named_steps["preprocess"].estimator

    @property
    def classifier(self):
        return self.pipeline.named_steps["classifier"]
