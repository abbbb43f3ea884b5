"""The fast path must reproduce the batch pipeline (predictor.predict_proba on a DataFrame)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from churn_assets.core.artifact import ScoreCalibrator
from churn_assets.core.spec import LABEL
from churn_assets.devtools.sample_models import sample_frames
from churn_assets.serving.fast_path import CompiledChurnModel, EncodedRecords, Uncompilable
from churn_assets.serving.model_store import load_serving_model
from churn_assets.serving.schema import RecordSchema
from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    SPEC, as_json_records, messy_records, register, registry, registry_template, trained)

TOLERANCE = 1e-9


def checked_records(frame: pd.DataFrame) -> list[tuple]:
    """The rows as the API reads them (JSON records through the request checks)."""
    schema = RecordSchema(SPEC, None, max_batch=len(frame))  # nothing required: keep every row
    problems: list[dict] = []
    rows = [schema.read_record(record, r, problems) for r, record in enumerate(as_json_records(frame))]
    assert problems == []
    return rows


def as_encoded(rows: list[tuple]) -> EncodedRecords:
    return EncodedRecords(np.array([numeric for numeric, _, _ in rows]),
                          [list(column) for column in zip(*(texts for _, texts, _ in rows))])


def with_calibration(predictor, method: str | None):
    """The predictor with its calibrator refitted by ``method`` on fresh labelled rows
    (None: no calibrator, the classifier's own probabilities, as old artifacts score)."""
    if method is None:
        return replace(predictor, calibrator=None)
    frames = sample_frames(n_customers=200, as_of="2026-04-06")
    decision = predictor.pipeline.decision_function(frames.validation)
    # Fitted on the middle 90% of decision values only, so that scored rows fall below
    # and above the fitted range and the isotonic clipping is exercised too.
    low, high = np.quantile(decision, [0.05, 0.95])
    middle = (decision >= low) & (decision <= high)
    labels = frames.validation[LABEL].to_numpy()
    return replace(predictor, calibrator=ScoreCalibrator.fit(method, decision[middle], labels[middle]))


@pytest.mark.parametrize("method", ["sigmoid", "isotonic", None])
@pytest.mark.parametrize("which", [0, 1], ids=["logistic_regression", "hist_gradient_boosting"])
def test_fast_path_equals_batch_pipeline_on_every_row(trained, which, method):
    predictor = with_calibration(trained[which], method)
    compiled = CompiledChurnModel(predictor)
    frame = messy_records(n_customers=600)  # > 4,000 rows: the HGB batch path splits them
    expected = predictor.predict_proba(frame)
    rows = checked_records(frame)
    one_by_one = np.array([compiled.predict_one(numeric, texts) for numeric, texts, _ in rows])
    batch = compiled.predict_many(as_encoded(rows))
    assert len(frame) > 4000
    # The test set really exercises the awkward cases.
    assert frame["country"].eq("Never Seen Before").sum() > 20 and frame["age"].isna().sum() > 20
    assert np.abs(one_by_one - expected).max() <= TOLERANCE
    assert np.abs(batch - expected).max() <= TOLERANCE
    encoded = compiled.encode_many(as_encoded(rows))
    assert np.abs(encoded - predictor.preprocessor.transform(frame)).max() <= 1e-12
    if method is not None:
        # The calibrator really changes the scores, and the rows reach past the ends of
        # an isotonic fit (its clipping is exercised, not only the interpolation).
        raw = predictor.pipeline.predict_proba(frame)[:, 1]
        assert np.abs(expected - raw).max() > 0.05
    if method == "isotonic":
        decision = predictor.pipeline.decision_function(frame)
        fitted = predictor.calibrator.model
        assert (decision < fitted.X_min_).any() and (decision > fitted.X_max_).any()


def test_trained_predictors_are_calibrated_and_compiled_with_their_calibrator(trained):
    """What training produces (sigmoid by default) is what the fast path reproduces."""
    for predictor in trained:
        assert predictor.calibrator is not None and predictor.calibrator.method == "sigmoid"
        assert CompiledChurnModel(predictor).calibrator is not None


def test_unknown_and_missing_categories_encode_as_in_training(trained):
    compiled = CompiledChurnModel(trained[0])
    country = SPEC.categorical_features.index("country")
    known = compiled.category_column(country, "us")
    assert known is not None
    assert compiled.category_column(country, "  United States ") == known  # alias, case, spaces
    assert compiled.category_column(country, "atlantis") is None  # unseen -> all zeros
    assert compiled.category_column(country, None) == compiled.category_column(country, "  ")


def test_a_model_without_an_exact_fast_path_is_served_by_the_pipeline(trained, registry):
    predictor = trained[0]
    forest = RandomForestClassifier(n_estimators=5, random_state=0)
    frame = messy_records(n_customers=80)
    labels = np.arange(len(frame)) % 2
    pipeline = Pipeline([("preprocess", predictor.pipeline.named_steps["preprocess"]), ("classifier", forest)])
    pipeline.fit(frame, labels)
    odd = replace(predictor, pipeline=pipeline, calibrator=None)  # a calibrator belongs to its own classifier
    with pytest.raises(Uncompilable):
        CompiledChurnModel(odd)
    version = register(registry, odd)
    pointer = registry.promote(version.version, "test")
    model = load_serving_model(registry, pointer, max_batch=100)
    assert model.compiled is None
    rows = checked_records(frame)
    got = model.predict_many(as_encoded(rows))
    assert np.abs(got - odd.predict_proba(frame)).max() <= TOLERANCE
    assert abs(model.predict_one(rows[3][0], rows[3][1]) - odd.predict_proba(frame.iloc[[3]])[0]) <= TOLERANCE


def test_a_batch_reads_the_same_column_by_column_as_row_by_row(trained):
    """Valid batches take the column-wise reading; it must agree with the per-row one."""
    compiled = CompiledChurnModel(trained[1])
    schema = RecordSchema(SPEC, compiled, max_batch=10_000)
    frame = messy_records(n_customers=60)
    for column in schema.required:  # a valid batch: gaps only where the model allows them
        filler = 2.0 if column in SPEC.numeric_features else "unseen"
        frame[column] = frame[column].where(frame[column].notna() & frame[column].astype(str).str.strip().ne(""),
                                            filler)
    records = as_json_records(frame)
    full = [{name: record.get(name) for name in records[0]} for record in records]
    for batch in (records, full):  # fields left out, and every field present
        fast = schema._read_columns(batch)
        assert fast is not None
        problems: list[dict] = []
        rows = [schema.read_record(record, r, problems) for r, record in enumerate(batch)]
        assert problems == []
        slow = as_encoded(rows)
        assert np.array_equal(fast.records.numeric, slow.numeric, equal_nan=True)
        assert fast.records.categories == slow.categories
        assert fast.customer_ids == [customer_id for _, _, customer_id in rows]
    # One integer category sends the batch down the row-by-row reading, same answer.
    mixed = [dict(record) for record in full]
    mixed[0]["country"] = 7
    assert schema._read_columns(mixed) is None
    parsed = schema.parse(orjson.dumps({"customers": mixed}))
    assert parsed.records.categories[SPEC.categorical_features.index("country")][0] == "7"


def test_batch_scoring_of_raw_frames_equals_the_pipeline(trained):
    from churn_assets.serving.fast_path import CompiledChurnModel

    # Messy raw frames as a file or the history holds them: numbers as text, stray case
    # and spaces, aliases, floats in text columns, gaps.
    records = messy_records(n_customers=600, seed=5)
    records.loc[records.index[::7], "plan"] = 1.0
    for predictor in trained:
        fast = CompiledChurnModel(predictor).predict_frame(records)
        assert np.abs(fast - predictor.predict_proba(records)).max() < TOLERANCE, predictor.family


def test_batch_scoring_split_across_threads_equals_the_pipeline(trained):
    """The forest's large-batch path (one thread per part, each encoding and walking its
    own rows) gives the pipeline's numbers, in the records' order."""
    from churn_assets.serving.fast_path import CompiledChurnModel
    from churn_assets.serving.scorers import ForestScorer

    records = pd.concat([messy_records(n_customers=600, seed=6)] * 3, ignore_index=True)
    forests = [p for p in trained if p.family == "hist_gradient_boosting"]
    assert forests
    for predictor in forests:
        compiled = CompiledChurnModel(predictor)
        assert isinstance(compiled.scorer, ForestScorer)
        compiled.scorer.threads = 3  # force the split whatever this machine's CPU count
        assert compiled.scorer.parts(len(records)) == 3, len(records)
        fast = compiled.predict_frame(records)
        assert np.abs(fast - predictor.predict_proba(records)).max() < TOLERANCE


def test_forest_binning_equals_scikit_learns_bin_mapper(trained):
    """The fast path bins with np.searchsorted; every value, including values exactly on a
    threshold, just beside one, beyond the ends and NaN, lands in scikit-learn's bin."""
    from churn_assets.serving.fast_path import CompiledChurnModel

    [predictor] = [p for p in trained if p.family == "hist_gradient_boosting"]
    forest = CompiledChurnModel(predictor).scorer
    mapper = predictor.classifier._bin_mapper
    rng = np.random.default_rng(3)
    columns = []
    for thresholds in mapper.bin_thresholds_:
        edges = np.concatenate([thresholds, np.nextafter(thresholds, np.inf),
                                np.nextafter(thresholds, -np.inf), [-1e300, 1e300, np.nan]])
        columns.append(rng.permutation(np.resize(edges, 4000)))
    X = np.column_stack(columns)
    assert np.array_equal(forest._bin(X), mapper.transform(X))
