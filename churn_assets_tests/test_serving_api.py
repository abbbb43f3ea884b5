"""The prediction API against the real app (FastAPI TestClient), backed by a real registry."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churn_assets.storage.atomic import atomic_write_json
from churn_assets.serving.app import ServeConfig, create_app
from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    SPEC, as_json_records, messy_records, registry, registry_template, trained, wait_for)

GOOD = {"customer_id": "C000001", "age": 41, "tenure_days": 320.0, "seats": 1, "monthly_spend": 29.0,
        "sessions_last_30d": 4, "orders_last_30d": 0, "avg_order_value": None,
        "support_tickets_last_90d": 3, "discount_share": 0.1, "country": "USA", "plan": "Basic",
        "payment_method": "COD", "acquisition_channel": "paid search"}


def make_client(registry, **config) -> TestClient:
    config.setdefault("poll_seconds", 0.05)
    return TestClient(create_app(ServeConfig(str(registry.root), **config)))


@pytest.fixture
def deployed(registry):
    registry.promote("v0001", "test")
    return registry


@pytest.fixture
def client(deployed):
    with make_client(deployed, max_batch=5, max_body_bytes=20_000) as c:
        yield c


def test_ready_is_503_before_the_first_deployment_then_follows_it(registry):
    with make_client(registry) as c:
        assert c.get("/health").status_code == 200
        for path in ("/ready", "/model"):
            response = c.get(path)
            assert response.status_code == 503
            assert "no production model deployed yet" in response.json()["reason"]
        assert c.post("/predict", json=GOOD).status_code == 503
        assert c.get("/openapi.json").json()["info"]["version"] == "no model"
        registry.promote("v0002", "first deploy")
        wait_for(lambda: c.get("/ready").status_code == 200, what="ready after the first deploy")
        assert c.get("/ready").json()["model_version"] == "v0002"
        assert c.post("/predict", json=GOOD).json()["model_version"] == "v0002"


def test_single_and_batch_predictions_equal_the_pipeline(client, trained):
    frame = messy_records(n_customers=40)[:5]
    required = client.get("/model").json()["required_fields"]
    for column in required:  # gaps only where the model allows them
        filler = 1.0 if column in SPEC.numeric_features else "unseen value"
        frame[column] = frame[column].where(frame[column].notna() & frame[column].astype(str).str.strip().ne(""),
                                            filler)
    records = as_json_records(frame)
    expected = trained[0].predict_proba(frame)
    batch = client.post("/predict", json={"customers": records})
    assert batch.status_code == 200, batch.text
    body = batch.json()
    got = np.array([p["churn_probability"] for p in body["predictions"]])
    assert np.abs(got - expected).max() <= 1e-9
    assert [p["churn_label"] for p in body["predictions"]] == list((expected >= trained[0].threshold).astype(int))
    assert {p["model_version"] for p in body["predictions"]} == {"v0001"}
    assert [p["customer_id"] for p in body["predictions"]] == list(frame["customer_id"])
    for record, p in zip(records, expected):
        single = client.post("/predict", json=record)
        assert single.status_code == 200, single.text
        assert abs(single.json()["churn_probability"] - p) <= 1e-9
        assert single.headers["x-model-version"] == "v0001"


def test_unknown_categories_and_left_out_optional_fields_are_handled_as_in_training(client, trained):
    record = {k: v for k, v in GOOD.items() if k not in ("avg_order_value", "age")}
    record["acquisition_channel"] = "carrier pigeon"
    response = client.post("/predict", json=record)
    assert response.status_code == 200, response.text
    frame = pd.DataFrame([record]).reindex(columns=SPEC.feature_columns)  # left out -> NaN
    assert frame[["age", "avg_order_value", "days_since_last_order"]].isna().all(axis=None)
    assert abs(response.json()["churn_probability"] - trained[0].predict_proba(frame)[0]) <= 1e-9


def row_field_pairs(response) -> set[tuple]:
    return {(p["row"], p["field"]) for p in response.json()["detail"]}


BAD_INPUTS = {
    "missing required field": ({k: v for k, v in GOOD.items() if k != "tenure_days"}, 422, {(0, "tenure_days")}),
    "null required field": ({**GOOD, "plan": None}, 422, {(0, "plan")}),
    "blank required category": ({**GOOD, "plan": "  "}, 422, {(0, "plan")}),
    "string for a number": ({**GOOD, "seats": "3"}, 422, {(0, "seats")}),
    "boolean for a number": ({**GOOD, "seats": True}, 422, {(0, "seats")}),
    "object for a category": ({**GOOD, "country": {"code": "us"}}, 422, {(0, "country")}),
    "unknown field": ({**GOOD, "favourite_colour": "red"}, 422, {(0, "favourite_colour")}),
    "bad customer id": ({**GOOD, "customer_id": [1]}, 422, {(0, "customer_id")}),
    "several problems in a batch": ({"customers": [GOOD, {**GOOD, "age": "old", "seats": None}, 7]}, 422,
                                    {(1, "age"), (1, "seats"), (2, None)}),
    "empty batch": ({"customers": []}, 422, {(None, "customers")}),
    "batch is not a list": ({"customers": {"a": GOOD}}, 422, {(None, "customers")}),
    "field next to the batch": ({"customers": [GOOD], "extra": 1}, 422, {(None, "extra")}),
    "batch over the limit": ({"customers": [GOOD] * 6}, 422, {(None, "customers")}),
    "top-level array": ([GOOD], 422, {(None, None)}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_client_error_naming_row_and_field(client, case):
    body, status, expected = BAD_INPUTS[case]
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert row_field_pairs(response) == expected


RAW_BAD_BODIES = {
    "NaN": b'{"age": NaN}',
    "Infinity": b'{"customers": [{"age": Infinity}]}',
    "-Infinity": b'{"age": -Infinity}',
    "overflowing number": b'{"age": 1e999}',
    "not JSON": b'{"age": ',
    "not UTF-8": b'{"plan": "\xff\xfe"}',
    "nested too deep": b"[" * 5000 + b"]" * 5000,
    "empty body": b"",
}


@pytest.mark.parametrize("case", list(RAW_BAD_BODIES))
def test_non_finite_numbers_and_broken_json_are_422(client, case):
    response = client.post("/predict", content=RAW_BAD_BODIES[case], headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["message"].startswith("body is not valid JSON")


def test_predict_needs_post(client):
    response = client.get("/predict")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_bodies_over_the_byte_limit_are_413_with_or_without_content_length(client):
    big = b'{"customers": [' + b" " * 30_000 + b"]}"
    assert client.post("/predict", content=big).status_code == 413

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(40):
            yield b" " * 1000
    response = client.post("/predict", content=chunks())
    assert response.status_code == 413
    assert "body over 20000 bytes" in response.json()["detail"][0]["message"]


def test_model_endpoint_describes_the_production_version(client, trained):
    info = client.get("/model").json()
    assert info["version"] == "v0001" and info["family"] == "logistic_regression"
    assert info["feature_spec"] == SPEC.to_dict()
    assert info["data_window"] == trained[0].data_window and info["trained_at"] == trained[0].trained_at
    assert info["metrics"]["roc_auc"] == pytest.approx(trained[0].validation_metrics["roc_auc"])
    assert info["required_fields"] == sorted(
        set(SPEC.feature_columns) - {"age", "avg_order_value", "days_since_last_order"})


def test_openapi_request_schema_is_generated_from_the_served_model(client):
    document = client.get("/openapi.json").json()
    record = document["components"]["schemas"]["CustomerRecord"]
    assert set(record["properties"]) == {*SPEC.feature_columns, SPEC.id_column, SPEC.timestamp_column}
    assert record["required"] == client.get("/model").json()["required_fields"]
    assert record["properties"]["plan"]["examples"] == ["basic", "enterprise", "pro"]
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/CustomerRecord"}
    assert client.get("/docs").status_code == 200


def test_auth_off_by_default_and_on_with_a_token(deployed, caplog):
    with make_client(deployed) as open_client:
        assert open_client.post("/predict", json=GOOD).status_code == 200
    token = "s3cret-token-for-tests"
    caplog.set_level(logging.DEBUG)
    with make_client(deployed, api_token=token) as c:
        assert c.post("/predict", json=GOOD).status_code == 401
        wrong = c.post("/predict", json=GOOD, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert c.post("/predict", json=GOOD, headers={"Authorization": token}).status_code == 401
        ok = c.post("/predict", json=GOOD, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["model_version"] == "v0001"
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
    assert token not in caplog.text


@pytest.mark.parametrize("damage", ["tampered", "truncated", "missing"])
def test_a_bad_artifact_is_refused_and_the_old_model_keeps_serving(deployed, damage, caplog):
    caplog.set_level(logging.INFO, logger="churn_assets")
    target = deployed.get("v0002")
    original = target.artifact_path.read_bytes()
    with make_client(deployed) as c:
        assert c.post("/predict", json=GOOD).json()["model_version"] == "v0001"
        if damage == "tampered":  # a valid, loadable model, just not the registered one
            target.artifact_path.write_bytes(deployed.get("v0003").artifact_path.read_bytes())
        elif damage == "truncated":
            target.artifact_path.write_bytes(original[: len(original) // 2])
        else:
            target.artifact_path.unlink()
        # A pointer moved to v0002 as a promotion writes it (the registry itself refuses to
        # promote a damaged artifact, so the damage happens after the check).
        atomic_write_json(deployed.pointer_path, {"version": "v0002", "sha256": target.sha256})
        ready = wait_for(lambda: (r := c.get("/ready").json()).get("degraded") and r, what="degraded /ready")
        assert ready["model_version"] == "v0001"
        assert "v0002" in ready["problem"] and "still serving v0001" in ready["problem"]
        assert "v0002" in caplog.text and "still serving v0001" in caplog.text
        assert c.post("/predict", json=GOOD).json()["model_version"] == "v0001"
        assert c.get("/model").json()["version"] == "v0001"
        target.artifact_path.write_bytes(original)  # repaired: picked up without a restart
        wait_for(lambda: c.get("/ready").json()["model_version"] == "v0002", what="the repaired v0002")
        assert c.get("/ready").json()["degraded"] is False
        assert c.post("/predict", json=GOOD).json()["model_version"] == "v0002"


def test_config_from_environment(tmp_path):
    config = ServeConfig.from_env({"CHURN_ASSETS_HOME": str(tmp_path), "CHURN_ASSETS_API_TOKEN": "t0k",
                                   "CHURN_ASSETS_SERVE_MAX_BATCH": "7"})
    assert config.registry_root == str(tmp_path / "registry")
    assert config.api_token == "t0k" and config.max_batch == 7
    assert ServeConfig.from_env({"CHURN_ASSETS_HOME": str(tmp_path), "CHURN_ASSETS_API_TOKEN": ""}).api_token is None


def test_a_tampered_first_deployment_leaves_the_server_not_ready(registry):
    target = registry.get("v0001")
    registry.promote("v0001", "first deploy")
    target.artifact_path.write_bytes(target.artifact_path.read_bytes() + b"appended")
    with make_client(registry) as c:
        response = c.get("/ready")
        assert response.status_code == 503
        assert "v0001" in response.json()["reason"] and "no model is being served" in response.json()["reason"]
        assert c.post("/predict", json=GOOD).status_code == 503
