"""Batches read column by column (serving/batch_decode.py) read exactly what the
row-by-row reading reads, and fall back to it for anything unusual."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from churn_assets.serving.fast_path import CompiledChurnModel
from churn_assets.serving.schema import RecordSchema, RequestRejected
from churn_assets_tests.serving_support import SPEC, as_json_records, messy_records, trained_predictors


@pytest.fixture(scope="module")
def schemas():
    predictor = trained_predictors()[0]
    columnar = RecordSchema(SPEC, CompiledChurnModel(predictor), 10_000)
    row_by_row = RecordSchema(SPEC, CompiledChurnModel(predictor), 10_000)
    row_by_row._columns = None
    return columnar, row_by_row


def valid_batch(schema) -> list[dict]:
    frame = messy_records(n_customers=300)
    for column in schema.required:  # gaps only where the model allows them
        filler = 1.0 if column in SPEC.numeric_features else "unseen value"
        present = frame[column].notna() & frame[column].astype(str).str.strip().ne("")
        frame[column] = frame[column].where(present, filler)
    return as_json_records(frame)


def test_columns_equal_the_row_by_row_reading(schemas):
    columnar, row_by_row = schemas
    records = valid_batch(columnar)
    body = orjson.dumps({"customers": records})
    assert columnar._columns.decode(body) is not None  # really the column reading
    fast, slow = columnar.parse(body), row_by_row.parse(body)
    assert fast.customer_ids == slow.customer_ids
    np.testing.assert_array_equal(fast.records.numeric, slow.records.numeric)
    assert [list(c) for c in fast.records.categories] == [list(c) for c in slow.records.categories]


def test_anything_unusual_goes_to_the_reading_that_names_it(schemas):
    columnar, row_by_row = schemas
    records = valid_batch(columnar)[:5]
    cases = [({"age": "41"}, "age"), ({"plan": None}, "plan"), ({"plan": " "}, "plan"),
             ({"seats": True}, "seats"), ({"typo": 1}, "typo")]
    for change, field in cases:
        body = orjson.dumps({"customers": [records[0], {**records[1], **change}]})
        with pytest.raises(RequestRejected) as caught:
            columnar.parse(body)
        assert caught.value.status == 422 and (1, field) in [(p["row"], p["field"]) for p in caught.value.problems]
    # A number sent for a category is read as text, as the row-by-row reading does.
    body = orjson.dumps({"customers": [records[0], {**records[1], "plan": 2}]})
    assert list(columnar.parse(body).records.categories[1]) == list(row_by_row.parse(body).records.categories[1])


def test_a_duplicate_key_beside_a_left_out_field_is_named(schemas):
    columnar, _ = schemas
    record = valid_batch(columnar)[0]
    optional = sorted(set(SPEC.feature_columns) - columnar.required)[0]
    partial = {k: v for k, v in record.items() if k != optional}
    inner = orjson.dumps(partial)[1:-1]
    body = b'{"customers": [' + orjson.dumps(record) + b', {' + inner + b', "plan": "pro"}]}'
    # Left out one field, repeated another: as many ':' as a full record, still caught.
    assert body.count(b":") == 1 + 2 * len(record)
    with pytest.raises(RequestRejected) as caught:
        columnar.parse(body)
    assert [(p["row"], p["field"]) for p in caught.value.problems] == [(1, "plan")]
