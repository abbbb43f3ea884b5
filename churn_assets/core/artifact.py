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

    def shifted(self, delta: float) -> ScoreCalibrator:
        """The same map with every output's log-odds moved by ``delta``: a prior-shift
        correction (the churn rate moved, the ranking did not). Platt: the intercept moves;
        isotonic: each step's level moves on the log-odds scale (still non-decreasing)."""
        import copy

        model = copy.deepcopy(self.model)
        if self.method == "sigmoid":
            model.intercept_ = model.intercept_ + delta
        else:
            levels = np.clip(model.y_thresholds_, 1e-12, 1 - 1e-12)
            moved = 1.0 / (1.0 + np.exp(-(np.log(levels / (1 - levels)) + delta)))
            # Fitted on its own (already monotone) steps, an isotonic map reproduces them.
            model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(model.X_thresholds_, moved)
        return ScoreCalibrator(self.method, model)

    @property
    def increasing(self) -> bool:
        """Whether the map keeps the classifier's ranking: a Platt slope above zero, an
        isotonic map that is not flat. A fit whose scores run the wrong way on the rows it
        was fitted on gives neither, and applying it would invert or erase the ranking."""
        if self.method == "sigmoid":
            return float(self.model.coef_[0, 0]) > 0
        return float(np.ptp(self.model.y_thresholds_)) > 0 if len(self.model.y_thresholds_) else False

    def __call__(self, decision: np.ndarray) -> np.ndarray:
        """Calibrated P(churn), shape (n,), of decision values of shape (n,)."""
        decision = np.asarray(decision, dtype=float)
        if self.method == "sigmoid":
            return self.model.predict_proba(decision[:, None])[:, 1]
        return self.model.predict(decision)


# Rows of validation decision values kept with a model to refit its calibrator on
# resamples (CalibrationSample): enough for a stable 2-parameter Platt map, small enough
# that a 10 M-row window adds under a megabyte to the artifact.
CALIBRATION_SAMPLE_ROWS = 50_000


@dataclass(frozen=True)
class CalibrationSample:
    """Out-of-time scores with labels: the evaluated fit's decision values on the
    validation and holdout weeks (``decision``, float64, shape (n,)), their 0/1 labels
    (``y``, int8) and customer codes (``groups``, int64), at most
    ``CALIBRATION_SAMPLE_ROWS`` rows of whole customers. The label-free estimate reads
    probabilities through a calibrator fitted on it (``fitted``), and carries that
    calibrator's uncertainty through refits on customer resamples (``resampled``)."""

    decision: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    @classmethod
    def of(cls, decision, y, groups, seed: int = 0, max_rows: int = CALIBRATION_SAMPLE_ROWS) -> CalibrationSample:
        codes, uniques = pd.factorize(np.asarray(groups, dtype=object), use_na_sentinel=False)
        decision, y = np.asarray(decision, dtype=float), np.asarray(y).astype(np.int8)
        if len(codes) > max_rows:
            share = max_rows / len(codes)
            kept = np.random.default_rng(seed).random(len(uniques)) < share
            rows = kept[codes]
            decision, y, codes = decision[rows], y[rows], pd.factorize(codes[rows])[0]
        return cls(decision, y, codes.astype(np.int64))

    def fitted(self, method: str) -> ScoreCalibrator:
        return ScoreCalibrator.fit(method, self.decision, self.y)

    def resampled(self, method: str, n: int, seed: int = 0) -> list[ScoreCalibrator]:
        """``n`` calibrators of ``method``, each fitted on a resample of whole customers
        drawn with replacement (one class only in a resample: that draw is skipped)."""
        rng = np.random.default_rng(seed)
        n_groups = int(self.groups.max()) + 1 if self.groups.size else 0
        by_group = np.argsort(self.groups, kind="stable")
        starts = np.searchsorted(self.groups[by_group], np.arange(n_groups + 1))
        out = []
        for _ in range(n):
            picked = rng.integers(0, n_groups, n_groups)
            rows = np.concatenate([by_group[starts[g]:starts[g + 1]] for g in picked]) if n_groups else by_group
            if np.unique(self.y[rows]).size == 2:
                out.append(ScoreCalibrator.fit(method, self.decision[rows], self.y[rows]))
        return out


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
    # Last, with defaults, so artifacts pickled before they existed load with None
    # (unpickling restores __dict__ only; the class attribute supplies the default).
    calibrator: ScoreCalibrator | None = None
    # The evaluated fit (core.training): what the holdout scored, with the same spec,
    # calibrator and threshold; None for a model that is its own evaluated fit (older
    # artifacts, and the evaluated fit itself).
    evaluated: ChurnPredictor | None = None
    calibration_sample: CalibrationSample | None = None
    calibration_losses: dict | None = None

    @property
    def evaluated_fit(self) -> ChurnPredictor:
        """The fit whose holdout score vouches for this model (itself for older artifacts)."""
        return self.evaluated if self.evaluated is not None else self

    def estimate_calibrators(self, n: int, seed: int = 0) -> tuple[ScoreCalibrator | None, list[ScoreCalibrator]]:
        """The calibrator the label-free estimate reads probabilities through (the served
        method, fitted on ``calibration_sample``) and ``n`` refits of it on customer
        resamples; (None, []) without a calibrator or a sample."""
        if self.calibrator is None or self.calibration_sample is None:
            return None, []
        method = self.calibrator.method
        return (self.calibration_sample.fitted(method),
                self.calibration_sample.resampled(method, n, seed))

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
