"""Chunked preprocessing: the same fitted transform and feature matrix as in one piece."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from churn_assets.core.encoding import encode_rows, fit_preprocessor
from churn_assets.core.features import build_preprocessor
from churn_assets.core.spec import LABEL, load_spec
from churn_assets.core.training import make_classifier, train_challenger
from churn_assets.devtools.sample_models import sample_frames
from churn_assets.sources.simulation import SimulatorSettings, simulate

SPEC = load_spec("simulator")


@functools.cache
def two_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Records split in two, with what a chunk can miss: a category and a numeric column's
    only missing values appear late; and a numeric column missing in every row."""
    frame = simulate(SimulatorSettings(n_customers=400), "2026-04-06").reset_index(drop=True)
    frame["seats"] = frame["seats"].astype("float64")
    frame["discount_share"] = np.nan
    first, second = frame.iloc[:3000].copy(), frame.iloc[3000:].copy()
    first["seats"] = first["seats"].fillna(1.0)
    second.loc[second.index[-3:], "seats"] = np.nan            # missing only in the last rows
    second.loc[second.index[-1], "country"] = "Atlantis"       # a category only in the last row
    first["plan"] = first["plan"].where(first.index % 7 != 0, None)
    return first, second


def fitted_at_once(frames) -> Pipeline:
    return build_preprocessor(SPEC).fit(pd.concat(frames, ignore_index=True))


def test_one_chunk_fits_exactly_what_the_whole_frame_fits():
    frames = two_frames()
    whole = pd.concat(frames, ignore_index=True)
    expected = fitted_at_once(frames).transform(whole)
    got = fit_preprocessor(SPEC, frames).transform(whole)
    assert np.array_equal(got, expected)


def test_small_chunks_give_the_same_layout_categories_and_statistics():
    frames = two_frames()
    whole = pd.concat(frames, ignore_index=True)
    reference, chunked = fitted_at_once(frames), fit_preprocessor(SPEC, frames, chunk_rows=257)
    assert list(chunked.get_feature_names_out()) == list(reference.get_feature_names_out())
    names = list(chunked.get_feature_names_out())
    assert "categorical__country_atlantis" in names and "numeric__missingindicator_seats" in names
    assert "numeric__missingindicator_discount_share" in names
    np.testing.assert_allclose(chunked.transform(whole), reference.transform(whole), rtol=0, atol=1e-9)
    numeric = lambda p: p.named_steps["columns"].named_transformers_["numeric"]  # noqa: E731
    assert np.array_equal(numeric(chunked).named_steps["impute"].statistics_,
                          numeric(reference).named_steps["impute"].statistics_)
    np.testing.assert_allclose(numeric(chunked).named_steps["scale"].var_,
                               numeric(reference).named_steps["scale"].var_, rtol=1e-12)


def test_the_unfitted_template_is_left_unfitted():
    """fit_preprocessor fits clones, so cloning its result gives a fresh preprocessor."""
    from sklearn.base import clone
    from sklearn.utils.validation import check_is_fitted
    fitted = fit_preprocessor(SPEC, two_frames(), chunk_rows=1000)
    template = dict((n, e) for n, e, _ in fitted.named_steps["columns"].transformers)["numeric"]
    with pytest.raises(Exception, match="not fitted"):
        check_is_fitted(template.named_steps["scale"])
    fresh = clone(fitted)
    with pytest.raises(Exception, match="not fitted"):
        fresh.transform(two_frames()[0])


def test_encode_rows_equals_transforming_the_kept_rows_at_once():
    first, second = two_frames()
    preprocessor = fit_preprocessor(SPEC, (first, second))
    keep = (np.arange(len(first)) % 3 != 0, None)
    encoded = encode_rows(preprocessor, [first, second], keep, chunk_rows=401)
    expected = preprocessor.transform(pd.concat([first[keep[0]], second]))
    assert encoded.flags.c_contiguous and encoded.dtype == np.float64
    assert np.array_equal(encoded, expected)


def test_no_rows_is_a_clear_error():
    empty = two_frames()[0].iloc[:0]
    with pytest.raises(ValueError, match="no rows to fit the preprocessing on"):
        fit_preprocessor(SPEC, [empty, empty])
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        list(encode_rows(fit_preprocessor(SPEC, two_frames()), [empty], chunk_rows=0))


def test_train_challenger_fits_what_a_pipeline_on_the_same_rows_fits():
    """The classifiers are fitted on encoded matrices, not through Pipeline.fit: the
    deployed model must equal the pipeline fitted on the serving window, and the
    evaluated fit the pipeline fitted on the train weeks."""
    frames = sample_frames(n_customers=300)
    preprocessor = fit_preprocessor(SPEC, [frames.train, frames.validation], chunk_rows=500)
    ts = SPEC.timestamp_column
    every = pd.concat(frames.frames, ignore_index=True)
    serving = every[every[ts] >= frames.serving_start]
    assert 0 < len(serving) < len(every)
    for family in ("logistic_regression", "hist_gradient_boosting"):
        predictor, _ = train_challenger(frames, SPEC, preprocessor, [family], 7, "test", "now", calibration=None)
        for fit, rows in ((predictor, serving), (predictor.evaluated, frames.train)):
            pipeline = Pipeline([("preprocess", FrozenEstimator(preprocessor)),
                                 ("classifier", make_classifier(family, 7))]).fit(rows, rows[LABEL].to_numpy())
            assert np.array_equal(fit.predict_proba(frames.holdout), pipeline.predict_proba(frames.holdout)[:, 1])
