"""The OpenAPI document and the server agree: what the /predict schema accepts is
answered, what it refuses is a 422, and every status given is declared.

Schemathesis found two contradictions (a batch over max_batch was a 413, which it does
not count as rejecting invalid data; a blank required category passed the schema and
got a 422). `.ci/run` runs Schemathesis itself against a served model; these cases pin
the decisions with a JSON Schema validator, on the document the server really serves.
"""

from __future__ import annotations

import re

import jsonschema
import pytest

from churn_assets.serving.schema import NOT_BLANK
from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    SPEC, registry, registry_template, trained)
from churn_assets_tests.test_serving_api import GOOD, make_client

MAX_BATCH = 5


@pytest.fixture
def served(registry):
    registry.promote("v0001", "test")
    with make_client(registry, max_batch=MAX_BATCH) as client:
        document = client.get("/openapi.json").json()
        yield client, document


def request_validator(document: dict) -> jsonschema.Draft202012Validator:
    """The /predict request body schema, its $refs resolved within the document."""
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**body, "components": document["components"]})


def required_categories(client) -> list[str]:
    required = set(client.get("/model").json()["required_fields"])
    fields = [c for c in SPEC.categorical_features if c in required]
    assert fields, "the fixture model has no required category: this test would prove nothing"
    return fields


def cases(client) -> dict[str, object]:
    required = required_categories(client)
    return {
        "a good record": GOOD,
        "blank required category": {**GOOD, required[0]: ""},
        "spaces in a required category": {**GOOD, required[0]: "  \t "},
        "ideographic space in a required category": {**GOOD, required[0]: "\u3000"},
        "a byte-order mark is text, not blank": {**GOOD, required[0]: "\ufeff"},
        "a full batch": {"customers": [GOOD] * MAX_BATCH},
        "a batch over max_batch": {"customers": [GOOD] * (MAX_BATCH + 1)},
        "an empty batch": {"customers": []},
        "snapshot date of any type (ignored)": {**GOOD, SPEC.timestamp_column: {"any": "thing"}},
        "snapshot date as epoch milliseconds": {**GOOD, SPEC.timestamp_column: 1772409600000},
    }


def test_the_schema_accepts_exactly_what_the_server_answers(served):
    client, document = served
    validator = request_validator(document)
    declared = set(document["paths"]["/predict"]["post"]["responses"])
    disagreements = []
    for name, body in cases(client).items():
        response = client.post("/predict", json=body)
        valid = validator.is_valid(body)
        assert str(response.status_code) in declared, (name, response.status_code, sorted(declared))
        # Valid by the schema: answered. Invalid: refused as invalid data (422), never a
        # status a client would read as "too big, split it" or "try again".
        if (valid and response.status_code != 200) or (not valid and response.status_code != 422):
            disagreements.append((name, valid, response.status_code, response.text[:200]))
    assert not disagreements, disagreements


def test_a_batch_over_max_batch_is_422_and_its_cap_is_in_the_schema(served):
    client, document = served
    batch = document["components"]["schemas"]["CustomerBatch"]["properties"]["customers"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH)
    response = client.post("/predict", json={"customers": [GOOD] * (MAX_BATCH + 1)})
    assert response.status_code == 422
    assert response.json()["detail"] == [{"row": None, "field": "customers",
                                          "message": f"{MAX_BATCH + 1} records; at most {MAX_BATCH} per request"}]


def test_not_blank_in_the_schema_is_exactly_what_the_server_calls_blank():
    # Every code point: the pattern finds a character iff str.strip() keeps one.
    pattern = re.compile(NOT_BLANK)
    differ = [hex(c) for c in range(0x110000) if (pattern.search(chr(c)) is None) != (chr(c).strip() == "")]
    assert not differ, differ[:10]
    # Unanchored, as JSON Schema patterns are: one kept character anywhere suffices.
    assert pattern.search("  x ") and not pattern.search(" \u2003\n")
