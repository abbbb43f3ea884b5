"""The evaluation's permutation importance, scored by the fast path, equals the pipeline's."""

from __future__ import annotations

import numpy as np

from churn_assets.core.spec import LABEL
from churn_assets.defs import reporting
from churn_assets.health.importance import permutation_importance_raw
from churn_assets.devtools.sample_models import sample_frames
from churn_assets_tests.serving_support import trained  # noqa: F401  (fixture)


def test_importance_rows_equal_the_pipelines_within_float_noise(trained):
    holdout = sample_frames(n_customers=400, as_of="2026-04-06").validation
    y_true = holdout[LABEL].to_numpy()
    for predictor in trained:  # logistic regression and gradient boosting
        fast = reporting.importance_rows(predictor, holdout, y_true)
        slow = permutation_importance_raw(predictor.predict_proba, holdout, y_true, predictor.spec.feature_columns,
                                          n_repeats=reporting.IMPORTANCE_REPEATS, seed=0,
                                          max_rows=reporting.IMPORTANCE_ROWS)
        assert [name for name, _, _ in fast] == [name for name, _, _ in slow]
        assert np.allclose([m for _, m, _ in fast], [m for _, m, _ in slow], rtol=0, atol=1e-9)
        assert any(abs(m) > 1e-3 for _, m, _ in fast)  # a real ranking, not all zeros
