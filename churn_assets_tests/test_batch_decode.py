"""Batches read column by column (serving/batch_decode.py) read exactly what the
row-by-row reading reads, and fall back to it for anything unusual."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from churn_assets.serving.fast_path import CompiledChurnModel, EncodedRecords
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


@pytest.mark.parametrize("left_out", ["numeric", "categorical", "id", "timestamp"])
def test_a_duplicate_key_beside_any_kind_of_left_out_field_is_named(schemas, left_out):
    columnar, _ = schemas
    if left_out == "categorical":  # every category is required by this model: a schema without one
        columnar = RecordSchema(SPEC, None, 10_000)
    optional = sorted(set(SPEC.feature_columns) - columnar.required)
    kind = {"numeric": SPEC.numeric_features, "categorical": SPEC.categorical_features}.get(left_out)
    name = min(c for c in optional if c in kind) if kind else getattr(SPEC, f"{left_out}_column")
    record = {**valid_batch(columnar)[0], SPEC.timestamp_column: "2026-03-02"}
    partial = {k: v for k, v in record.items() if k != name}
    repeated = "plan" if name != "plan" else "country"
    ok = orjson.dumps({"customers": [record, partial]})
    assert columnar._columns.decode(ok) is not None  # the column reading takes it
    body = (b'{"customers": [' + orjson.dumps(record) + b', {' + orjson.dumps(partial)[1:-1]
            + b', "' + repeated.encode() + b'": "pro"}]}')
    assert body.count(b":") == 1 + 2 * len(record)
    with pytest.raises(RequestRejected) as caught:
        columnar.parse(body)
    assert [(p["row"], p["field"]) for p in caught.value.problems] == [(1, repeated)]


def test_left_out_and_null_numbers_are_the_plain_nan(schemas):
    columnar, row_by_row = schemas
    records = valid_batch(columnar)
    assert any(len(r) < len(records[0]) for r in records) and any(None in r.values() for r in records)
    body = orjson.dumps({"customers": records})
    fast, slow = columnar.parse(body).records.numeric, row_by_row.parse(body).records.numeric
    assert np.isnan(fast).any()
    np.testing.assert_array_equal(fast.view(np.uint64), slow.view(np.uint64))  # the same bits


def test_a_bad_value_in_the_last_record_of_a_full_batch_names_that_record(schemas):
    columnar, _ = schemas
    records = valid_batch(columnar)
    batch = [records[i % len(records)] for i in range(10_000)]
    required = min(c for c in columnar.required if c in SPEC.numeric_features)
    batch[-1] = {**batch[-1], required: None}
    batch[-2] = {**batch[-2], "seats": "two"}
    with pytest.raises(RequestRejected) as caught:
        columnar.parse(orjson.dumps({"customers": batch}))
    assert caught.value.status == 422
    assert {(p["row"], p["field"]) for p in caught.value.problems} == {(9_998, "seats"), (9_999, required)}


@pytest.mark.parametrize("customer_id", [2**63 - 1, -2**63, 2**63, 2**64 - 1, 2**64, -2**63 - 1])
def test_integer_ids_at_the_edges_of_64_bits_read_as_row_by_row(schemas, customer_id):
    columnar, row_by_row = schemas
    records = valid_batch(columnar)[:3]
    body = orjson.dumps({"customers": records}).replace(
        orjson.dumps(records[1][SPEC.id_column]), str(customer_id).encode(), 1)

    def outcome(schema):
        try:
            return schema.parse(body).customer_ids
        except RequestRejected as exc:
            return exc.status, exc.problems
    assert outcome(columnar) == outcome(row_by_row)
    if -2**63 <= customer_id < 2**63:
        assert columnar._columns.decode(body) is not None  # the column reading took it


def test_left_out_numbers_are_counted_in_the_lists_where_nan_payloads_are_lost():
    predictor = trained_predictors()[0]
    schema = RecordSchema(SPEC, CompiledChurnModel(predictor), 10_000)
    schema._columns.bits_count = False  # as on a platform that drops NaN payloads
    record = valid_batch(schema)[0]
    name = min(c for c in set(SPEC.numeric_features) - schema.required)
    partial = {k: v for k, v in record.items() if k != name}
    assert np.isnan(schema.parse(orjson.dumps({"customers": [record, partial]})).records.numeric).any()
    body = b'{"customers": [' + orjson.dumps(record) + b', {' + orjson.dumps(partial)[1:-1] + b', "plan": "pro"}]}'
    with pytest.raises(RequestRejected) as caught:
        schema.parse(body)
    assert [(p["row"], p["field"]) for p in caught.value.problems] == [(1, "plan")]


@pytest.mark.parametrize("path", ["columns", "row by row"])
def test_a_duplicate_key_in_a_large_body_is_named(schemas, path):
    """Above 64 KiB the ':' are counted in the pass that bounds the body's values."""
    columnar, _ = schemas
    records = valid_batch(columnar)
    batch = [records[i % len(records)] for i in range(2_000)]
    if path == "row by row":  # a number as text elsewhere: the column reading gives up
        batch[7] = {**batch[7], "age": "41"}
    parts = [orjson.dumps(r) for r in batch]
    parts[1_500] = parts[1_500][:-1] + b', "plan": "pro"}'
    body = b'{"customers": [' + b", ".join(parts) + b"]}"
    assert len(body) > 64 * 1024
    with pytest.raises(RequestRejected) as caught:
        columnar.parse(body)
    assert [(p["row"], p["field"]) for p in caught.value.problems] == [(1_500, "plan")]


def test_the_factorized_categories_are_the_categories(schemas):
    columnar, _ = schemas
    predictor = trained_predictors()[0]
    records = valid_batch(columnar)
    body = orjson.dumps({"customers": records})
    fast = columnar.parse(body).records
    assert fast.codes is not None
    for column, (codes, uniques) in zip(fast.categories, fast.codes):
        assert [uniques[c] if c >= 0 else None for c in codes] == list(column)
    compiled = CompiledChurnModel(predictor)
    again = EncodedRecords(fast.numeric, fast.categories)  # factorized by the model itself
    np.testing.assert_array_equal(compiled.predict_many(fast), compiled.predict_many(again))
    np.testing.assert_array_equal(compiled.encode_many(fast), compiled.encode_many(again))
    # Left out (no schema requires a category here): read as missing, like null.
    lenient = RecordSchema(SPEC, None, 10_000)
    name = SPEC.categorical_features[0]
    gaps = [records[0], {k: v for k, v in records[1].items() if k != name}, {**records[2], name: None}]
    got = lenient.parse(orjson.dumps({"customers": gaps})).records
    codes, uniques = got.codes[0]
    assert list(got.categories[0])[1:] == [None, None]
    assert [uniques[c] if c >= 0 else None for c in codes] == list(got.categories[0])
    # The model encodes a left-out category from the codes as it does from the texts.
    again = EncodedRecords(got.numeric, got.categories)
    np.testing.assert_array_equal(compiled.encode_many(got), compiled.encode_many(again))
    np.testing.assert_array_equal(compiled.predict_many(got), compiled.predict_many(again))
