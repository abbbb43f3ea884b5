"""A batch's answer is written by msgspec from one struct per customer
(``predict_endpoint.score``): the bytes must be those orjson writes for the dicts."""

from __future__ import annotations

from itertools import repeat

import msgspec
import numpy as np
import orjson
import pytest
from scipy.special import expit

from churn_assets.serving.model_store import load_serving_model
from churn_assets.serving.predict_endpoint import Prediction, score
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets_tests.serving_support import (  # noqa: F401  (registry's fixtures)
    SPEC,
    as_json_records,
    registry,
    registry_template,
    trained,
)


def as_dicts(ids, probabilities, labels, version) -> bytes:
    return orjson.dumps([{"customer_id": c, "churn_probability": p, "churn_label": label, "model_version": version}
                         for c, p, label in zip(ids, probabilities, labels)])


def test_struct_answers_are_byte_for_byte_orjsons_dicts():
    rng = np.random.default_rng(3)
    probabilities = np.concatenate([
        rng.random(200_000), rng.random(200_000) ** 12, expit(rng.normal(0, 40, 200_000)),
        rng.random(1000) * 1e-300, [0.0, 1.0, 5e-324, 2.2250738585072014e-308, 1e-7, 0.1, 1 / 3, 1 - 2**-53]]).tolist()
    ids = [f"C{i:07d}" for i in range(len(probabilities))]
    ids[:8] = [None, 0, -2**63, 2**63 - 1, "", "é\u2028\"\\/\x00\x1f", "😀", "a,b:{c}"]
    labels = [int(p >= 0.5) for p in probabilities]
    encoded = msgspec.json.encode(list(map(Prediction, ids, probabilities, labels, repeat("v0001"))))
    assert encoded == as_dicts(ids, probabilities, labels, "v0001")


@pytest.mark.parametrize("version", ["v0001", "v0002"])  # logistic regression, boosted trees
def test_a_batch_answer_is_the_dicts_answer(registry, version):  # noqa: F811
    pointer = registry.promote(version, "test")
    model = load_serving_model(registry, pointer, max_batch=10_000)
    raw = simulate(SimulatorSettings(n_customers=300, seed=5), "2026-03-02")
    records = as_json_records(raw[[SPEC.id_column, *SPEC.feature_columns]])
    records[3].pop("customer_id")
    records[4]["customer_id"] = 17
    request = model.schema.parse(orjson.dumps({"customers": records}))
    answer = orjson.loads(orjson.dumps(score(model, request)))
    proba = model.predict_many(request.records)
    assert answer["model_version"] == model.version and answer["threshold"] == model.threshold
    expected = as_dicts(request.customer_ids, proba.tolist(), (proba >= model.threshold).astype(int).tolist(),
                        model.version)
    assert orjson.dumps(answer["predictions"]) == expected
    assert [p["customer_id"] for p in answer["predictions"]][3:5] == [None, 17]
