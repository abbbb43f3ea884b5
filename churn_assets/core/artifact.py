"""The deployable artifact: one object mapping raw customer records to churn probability."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from churn_assets.core.spec import FeatureSpec


@dataclass
class ChurnPredictor:
    """A trained churn model with the exact preprocessing it was trained with.

    ``pipeline`` is a scikit-learn Pipeline with steps ``preprocess`` (the fitted
    normalize -> impute/one-hot/scale pipeline from ``features.build_preprocessor``,
    wrapped in ``FrozenEstimator``) and ``classifier`` (LogisticRegression or
    HistGradientBoostingClassifier). ``threshold`` is the probability at or above which
    a customer is labelled a churner, tuned on the validation weeks.
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

    def predict_proba(self, records: pd.DataFrame) -> np.ndarray:
        """P(churn) for each row of ``records`` (raw records, spec columns): shape (n_rows,)."""
        return self.pipeline.predict_proba(records)[:, 1]

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
