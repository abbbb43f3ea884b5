"""Reasons per customer: additive, grouped back to raw features, the same in the risk list
and in /predict?explain=true; and the risk list's value and change arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churn_assets.core.artifact import ScoreCalibrator
from churn_assets.core.risk import (EXACT_CHURNERS_MAX, compare_with_previous, finish_risk_list,
                                    poisson_binomial_interval)
from churn_assets.devtools.sample_models import sample_frames
from churn_assets.serving.app import ServeConfig, create_app
from churn_assets.serving.explain import DECISION, LOG_ODDS, explainer_for, tree_path_table
from churn_assets.serving.fast_path import CompiledChurnModel
from churn_assets.serving.risk_list import build_risk_list
from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    SPEC, as_json_records, messy_records, registry, registry_template, trained, trained_predictors)

FAMILIES = {"logistic_regression": 0, "hist_gradient_boosting": 1}


def explainer(predictor):
    return explainer_for(CompiledChurnModel(predictor), predictor)


def raw_feature_of(names: list[str]) -> list[str]:
    """Each encoded column's raw feature, read from scikit-learn's own output names
    (``numeric__missingindicator_age``, ``categorical__plan_basic``), not from our tables."""
    out = []
    for name in names:
        block, _, rest = name.partition("__")
        if block == "numeric":
            out.append(rest.removeprefix("missingindicator_"))
        else:
            out.append(max((c for c in SPEC.categorical_features if rest.startswith(c + "_")), key=len))
    return out


@pytest.fixture(scope="module")
def frames():
    return sample_frames(n_customers=600)  # the rows trained_predictors() fitted on


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic", None])
def test_contributions_plus_base_equal_the_served_score(family, calibration, frames):
    predictor = trained_predictors()[FAMILIES[family]]
    rows = messy_records(n_customers=300)
    decision = predictor.pipeline.decision_function(rows)
    if calibration != "sigmoid":  # the same fit with the other calibrators
        calibrator = None if calibration is None else ScoreCalibrator.fit(
            calibration, predictor.pipeline.decision_function(frames.validation), frames.validation["_label"])
        predictor = dataclasses.replace(predictor, calibrator=calibrator)
    ex = explainer(predictor)
    done = ex.explain_frame(rows)
    assert done.contributions.shape == (len(rows), len(SPEC.feature_columns))
    assert ex.features == tuple(SPEC.feature_columns)
    total = done.base + done.contributions.sum(axis=1)
    if calibration == "sigmoid":  # Platt: calibrated log-odds a * f + b, effects scaled by a
        model = predictor.calibrator.model
        expected = model.coef_[0, 0] * decision + model.intercept_[0]
        assert done.scale == LOG_ODDS and ex.slope == model.coef_[0, 0]
    elif calibration == "isotonic":  # not linear: explained on the decision value
        expected = decision
        assert done.scale == DECISION
    else:
        expected = decision
        assert done.scale == LOG_ODDS
        np.testing.assert_allclose(total, np.log(done.probability / (1 - done.probability)), atol=1e-6)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(done.probability, predictor.predict_proba(rows), rtol=0, atol=1e-9)


def test_logistic_contributions_are_coefficients_times_the_deviation_from_the_training_mean(frames):
    predictor = trained_predictors()[0]
    pre = predictor.preprocessor
    names = list(pre.get_feature_names_out())
    assert any("missingindicator_" in n for n in names)  # missing indicators are grouped too
    owner = np.array(raw_feature_of(names))
    window_mean = pre.transform(frames.training_window).mean(axis=0)
    rows = messy_records(n_customers=200)
    deviation = (pre.transform(rows) - window_mean) * predictor.classifier.coef_[0]
    slope = predictor.calibrator.model.coef_[0, 0]
    expected = np.column_stack([deviation[:, owner == f].sum(axis=1) for f in SPEC.feature_columns]) * slope
    ex = explainer(predictor)
    assert "category shares included" in ex.reference_note
    np.testing.assert_allclose(ex.explain_frame(rows).contributions, expected, rtol=0, atol=1e-9)
    # The base is the training window's average customer's calibrated log-odds.
    mean_decision = predictor.pipeline.decision_function(frames.training_window).mean()
    assert ex.base == pytest.approx(slope * mean_decision + predictor.calibrator.model.intercept_[0], abs=1e-9)


def test_tree_attributions_group_one_hot_and_indicator_columns_into_their_feature(frames):
    predictor = trained_predictors()[1]
    ex = explainer(predictor)
    compiled = ex.compiled
    names = list(predictor.preprocessor.get_feature_names_out())
    owner = np.array(raw_feature_of(names))
    rows = messy_records(n_customers=200)
    X = compiled.encode_many(compiled.frame_records(rows))
    # Per encoded column (every column its own group), walked tree by tree without tables.
    per_column = np.zeros(X.shape)
    scorer = compiled.scorer
    identity = np.arange(compiled.n_encoded)
    for t, predictors in enumerate(predictor.classifier._predictors):
        nodes = predictors[0].nodes
        table, _ = tree_path_table(nodes, scorer.leaf_tables.leaf_nodes[t], identity, compiled.n_encoded)
        leaf_row = {node: i for i, node in enumerate(scorer.leaf_tables.leaf_nodes[t])}
        for r in range(len(X)):
            node = 0
            while not nodes["is_leaf"][node]:
                go_left = X[r, nodes["feature_idx"][node]] <= nodes["num_threshold"][node]
                node = nodes["left"][node] if go_left else nodes["right"][node]
            per_column[r] += table[leaf_row[node]]
    slope = predictor.calibrator.model.coef_[0, 0]
    grouped = np.column_stack([per_column[:, owner == f].sum(axis=1) for f in SPEC.feature_columns]) * slope
    np.testing.assert_allclose(ex.explain_encoded(X).contributions, grouped, rtol=0, atol=1e-9)
    used = {owner[f] for p in predictor.classifier._predictors for f in p[0].nodes["feature_idx"][~p[0].nodes["is_leaf"].astype(bool)]}
    assert {"plan", "payment_method"} & used  # one-hot blocks really were split on
    # The base is the deployed fit's training rows' mean raw score, on the calibrated
    # scale: the rows of the serving window (core.windows).
    ts = SPEC.timestamp_column
    served = pd.concat(frames.frames, ignore_index=True)
    served = served[served[ts] >= frames.serving_start]
    mean_raw = predictor.pipeline.decision_function(served).mean()
    assert ex.base == pytest.approx(slope * mean_raw + predictor.calibrator.model.intercept_[0], abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_feature_made_extreme_is_the_top_reason(family):
    predictor = trained_predictors()[FAMILIES[family]]
    sample = messy_records(n_customers=300).dropna()
    # An ordinary customer: every numeric feature at its median, every category its mode.
    typical = {c: sample[c].median() for c in SPEC.numeric_features}
    typical |= {c: sample[c].mode()[0] for c in SPEC.categorical_features}
    ordinary = pd.DataFrame([{SPEC.id_column: "C1", **typical}])
    extreme = ordinary.assign(support_tickets_last_90d=25.0)  # the simulator's churn rises with every ticket
    scores, _, _ = build_risk_list(predictor, extreme, "v", "2026-05-04T03:00:00", 1000, None)
    assert scores["reason_1"].tolist() == ["support_tickets_last_90d"]
    before, _, _ = build_risk_list(predictor, ordinary, "v", "2026-05-04T03:00:00", 1000, None)
    assert (scores["churn_probability"] > before["churn_probability"]).all()
    assert scores["reason_1_effect"][0] > 2 * np.nan_to_num(scores["reason_2_effect"][0])
    # Reasons are ordered, strongest push toward churn first, and only pushes up.
    many, _, _ = build_risk_list(predictor, sample, "v", "2026-05-04T03:00:00", 1000, None)
    effects = many[["reason_1_effect", "reason_2_effect", "reason_3_effect"]].to_numpy()
    assert (np.nan_to_num(np.diff(effects, axis=1), nan=-1) <= 0).all() and (np.nan_to_num(effects, nan=1) > 0).all()


@pytest.mark.parametrize("version", ["v0001", "v0002"])
def test_explain_true_answers_match_the_risk_list(registry, version):
    registry.promote(version, "test")
    predictor = registry.load(registry.get(version))
    frame = messy_records(n_customers=60).head(40)
    compiled = CompiledChurnModel(predictor)
    optional = compiled.ever_missing | compiled.seen_missing_category
    for column in set(SPEC.feature_columns) - optional:  # gaps only where the model allows them
        filler = 1.0 if column in SPEC.numeric_features else "unseen value"
        present = frame[column].notna() & frame[column].astype(str).str.strip().ne("")
        frame[column] = frame[column].where(present, filler)
    scores, _, _ = build_risk_list(predictor, frame, version, "2026-05-04T03:00:00", 1000, None)
    records = as_json_records(frame)
    with TestClient(create_app(ServeConfig(str(registry.root), poll_seconds=0.05))) as client:
        batch = client.post("/predict?explain=true", json={"customers": records})
        assert batch.status_code == 200, batch.text
        answers = batch.json()["predictions"]
        single = client.post("/predict?explain=true", json=records[3]).json()
        plain = client.post("/predict", json=records[3]).json()
        assert "reasons" not in plain
        bad = client.post("/predict?explain=maybe", json=records[3])
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "explain"
        document = client.get("/openapi.json").json()
        parameters = document["paths"]["/predict"]["post"]["parameters"]
        assert parameters[0]["name"] == "explain" and "base_log_odds" in parameters[0]["description"]
    strip = [(r["feature"], r["value"]) for r in single["reasons"]]
    assert strip == [(r["feature"], r["value"]) for r in answers[3]["reasons"]]
    assert [r["effect"] for r in single["reasons"]] == pytest.approx([r["effect"] for r in answers[3]["reasons"]],
                                                                   abs=1e-12)
    assert single["churn_probability"] == pytest.approx(answers[3]["churn_probability"], abs=1e-12)
    for row, answer in zip(scores.itertuples(), answers):
        assert answer["churn_probability"] == pytest.approx(row.churn_probability, abs=1e-12)
        names = [r["feature"] for r in answer["reasons"]]
        expected = [n for n in (row.reason_1, row.reason_2, row.reason_3) if isinstance(n, str)]
        assert names == expected
        effects = [row.reason_1_effect, row.reason_2_effect, row.reason_3_effect][:len(names)]
        assert [r["effect"] for r in answer["reasons"]] == pytest.approx(effects, abs=1e-9)
        assert answer["base_log_odds"] == pytest.approx(single["base_log_odds"])
    # "value" is what the customer sent for that feature.
    for reason in single["reasons"]:
        assert records[3].get(reason["feature"]) == reason["value"]


def test_what_changed_since_the_previous_list():
    previous = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "churn_probability": [0.9, 0.2, 0.6, 0.1],
                             "churn_label": [1, 0, 1, 0]})
    now = pd.DataFrame({"customer_id": ["a", "b", "c", "e"], "churn_probability": [0.8, 0.7, 0.3, 0.9],
                        "churn_label": [1, 1, 0, 1]})
    changed = compare_with_previous(now, previous, "customer_id")
    assert changed["new_at_risk"].tolist() == [False, True, False, True]
    np.testing.assert_allclose(changed["risk_change"], [-0.1, 0.5, -0.3, np.nan])
    first = compare_with_previous(now, None, "customer_id")
    assert first["new_at_risk"].tolist() == [True, True, False, True] and first["risk_change"].isna().all()


def test_value_at_risk_and_expected_churners():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.3, 400)
    scores = pd.DataFrame({"customer_id": [f"c{i}" for i in range(400)], "churn_probability": p,
                           "churn_label": (p > 0.2).astype(int), "risk_decile": 1, "model_version": "v",
                           "scored_at": pd.Timestamp("2026-05-04")})
    records = pd.DataFrame({"monthly_spend": rng.uniform(10, 100, 400)})
    records.loc[5, "monthly_spend"] = np.nan
    out, summary = finish_risk_list(scores, records, "monthly_spend", 28, None, "customer_id")
    np.testing.assert_allclose(out["value_at_risk"], p * records["monthly_spend"])
    assert summary["value_at_risk_low"] < summary["value_at_risk"] < summary["value_at_risk_high"]
    assert summary["value_at_risk"] == pytest.approx(np.nansum(p * records["monthly_spend"]), abs=0.01)
    assert summary["customers_without_value"] == 1
    # Simulated churners fall in the 95% interval about 95% of the time.
    mean, low, high = poisson_binomial_interval(p)
    draws = (rng.random((4000, len(p))) < p).sum(axis=1)
    inside = ((draws >= low) & (draws <= high)).mean()
    assert mean == pytest.approx(p.sum()) and 0.93 < inside <= 1.0
    # Without a value column: value_at_risk is the probability, and the summary says so.
    plain, summary = finish_risk_list(scores, records, None, 28, None, "customer_id")
    np.testing.assert_array_equal(plain["value_at_risk"], p)
    assert summary["value_column"] is None and "value_at_risk is the churn probability" in summary["value_at_risk_note"]


def test_the_large_sample_interval_agrees_with_the_exact_one():
    rng = np.random.default_rng(1)
    p = rng.beta(0.5, 4, EXACT_CHURNERS_MAX)
    exact = poisson_binomial_interval(p)
    approximate = poisson_binomial_interval(np.concatenate([p, np.zeros(1)]))  # over the exact limit
    assert abs(exact[1] - approximate[1]) <= 1 and abs(exact[2] - approximate[2]) <= 1
