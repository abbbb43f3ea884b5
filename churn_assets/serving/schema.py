"""The /predict request: parsed and checked against the loaded model's feature spec.

A body is one customer record (a JSON object keyed by feature name) or a batch,
``{"customers": [record, ...]}``. Every problem found is reported together as
``{"row", "field", "message"}`` (``row`` is the index in the batch, 0 for a single
record, null for problems with the body as a whole), never as a server error.

Which fields a record needs comes from the fitted model, not from code: a feature the
model saw missing in its training window (it has a missing indicator, or a
``__missing__`` category) may be left out or null and is then imputed exactly as in
training; any other feature is required, because the model has learnt nothing about
its absence and a forgotten field is far more often a client bug than a real gap.
Unknown categories are accepted (all-zero one-hot, as in training).

The checks are hand-written loops over plain dicts rather than a pydantic model: a
single-record request spends a few microseconds here, against tens for a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter

import numpy as np
import orjson

from churn_assets.serving.batch_decode import ColumnDecoder
from churn_assets.serving.fast_path import CompiledChurnModel, EncodedRecords
from churn_assets.core.categories import as_text
from churn_assets.core.spec import FeatureSpec

BATCH_KEY = "customers"
_BATCH_KEY_BYTES = b'"customers"'
MAX_REPORTED_PROBLEMS = 200
_ABSENT = object()
_NUMBERS_OR_NONE = frozenset({float, int, type(None)})
NAN = float("nan")
# Bodies above this size have their JSON value count bounded before parsing (below it,
# a parse is cheap whatever the body holds).
COUNTED_BODY_BYTES = 64 * 1024
SLACK_FIELDS = 4  # a few unknown fields per record still get their 422, not a 413
# JSON Schema for "not blank": some character that str.strip() keeps. Python's whitespace
# spelled out, because `\S` differs between regex dialects (ECMA's includes U+FEFF).
NOT_BLANK = r"[^\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


class RequestRejected(Exception):
    """A client error: HTTP ``status`` with one entry per problem."""

    def __init__(self, status: int, problems: list[dict]):
        super().__init__(f"{status}: {problems[:3]}")
        self.status = status
        self.problems = problems

    def body(self) -> dict:
        shown = self.problems[:MAX_REPORTED_PROBLEMS]
        return {"detail": shown, "problem_count": len(self.problems),
                "truncated": len(self.problems) > len(shown)}


def byte_counts(body: bytes, chars: bytes) -> list[int]:
    """How many bytes of ``body`` are each of ``chars``: one vectorised compare per char
    (``bytes.count`` of one byte measured 6x slower on a 3.3 MB body), all chars on one
    slice while it is in cache."""
    if len(body) < COUNTED_BODY_BYTES:
        return [body.count(bytes([c])) for c in chars]
    data = np.frombuffer(body, dtype=np.uint8)
    step = 256 * 1024  # compared a slice at a time: memory stays far below the body's size
    counts = [0] * len(chars)
    for i in range(0, len(data), step):
        part = data[i:i + step]
        for k, c in enumerate(chars):
            counts[k] += int(np.count_nonzero(part == c))
    return counts


def byte_count(body: bytes, chars: bytes) -> int:
    """How many bytes of ``body`` are any of ``chars``."""
    return sum(byte_counts(body, chars))


def problem(row: int | None, field: str | None, message: str) -> dict:
    return {"row": row, "field": field, "message": message}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _getter(names: tuple[str, ...]):
    """row -> tuple of row[name] for names (itemgetter returns a bare value for one name)."""
    if len(names) == 1:
        return lambda row, name=names[0]: (row[name],)
    return itemgetter(*names) if names else (lambda row: ())


def _key_count(payload: dict) -> int:
    """Keys of the body object and of the records of a batch (not of deeper objects,
    which are invalid anyway and only send the body down the slower duplicate check)."""
    rows = payload.get(BATCH_KEY)
    if type(rows) is not list:
        return len(payload)
    return len(payload) + sum([len(row) for row in rows if type(row) is dict])


def _reject_duplicate_keys(body: bytes, batch: bool) -> None:
    """422 naming every key that appears twice in one object (the rare, slow path)."""
    found: dict[int, list[str]] = {}

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            found[id(obj)] = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        return obj

    try:
        payload = json.loads(body, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):  # orjson accepted it; nothing more to learn here
        return
    if not found:
        return  # the extra ':' were inside strings
    problems = []
    for key in found.pop(id(payload), []):
        problems.append(problem(None if batch else 0, key, "duplicate key: each field may appear"
                                " only once per object"))
    rows = payload.get(BATCH_KEY) if batch else None
    for r, row in enumerate(rows if type(rows) is list else []):
        for key in found.pop(id(row), []):
            problems.append(problem(r, key, "duplicate key: each field may appear only once per record"))
    for keys in found.values():  # inside a nested object (a value that should be a scalar)
        problems.extend(problem(None, key, "duplicate key in a nested object") for key in keys)
    raise RequestRejected(422, problems)


@dataclass(frozen=True)
class PredictRequest:
    """A checked request: ``customer_ids`` (None where not given) and the feature values."""

    batch: bool
    customer_ids: list
    records: EncodedRecords


class RecordSchema:
    """Validates records for one loaded model; immutable once built."""

    def __init__(self, spec: FeatureSpec, compiled: CompiledChurnModel | None, max_batch: int):
        self.spec = spec
        self.max_batch = max_batch
        self.numeric = tuple(spec.numeric_features)
        self.categorical = tuple(spec.categorical_features)
        if compiled is not None:
            optional = compiled.ever_missing | compiled.seen_missing_category
            self.categories = compiled.categories
        else:  # no fast path: nothing is known about training gaps, so nothing is required
            optional = frozenset(spec.feature_columns)
            self.categories = {}
        self.required = frozenset(c for c in spec.feature_columns if c not in optional)
        # The id is echoed back; the snapshot date is accepted so stored rows can be sent as is.
        self.id_column = spec.id_column
        self.allowed = frozenset([*spec.feature_columns, spec.id_column, spec.timestamp_column])
        self._all_null = dict.fromkeys(spec.feature_columns)
        self._numeric_getter = _getter(self.numeric)
        self._category_getter = _getter(self.categorical)
        self._required_numeric = [i for i, c in enumerate(self.numeric) if c in self.required]
        self._required_categorical = [j for j, c in enumerate(self.categorical) if c in self.required]
        self._columns = (None if BATCH_KEY in self.allowed else ColumnDecoder(
            BATCH_KEY, spec.id_column, spec.timestamp_column, self.numeric, self.categorical,
            self._required_numeric, self._required_categorical))

    # -- parsing -------------------------------------------------------------------------
    def parse(self, body: bytes) -> PredictRequest:
        """Parse and check a request body; raises ``RequestRejected`` (422 or 413)."""
        colons = self._bound_parse_cost(body) if len(body) > COUNTED_BODY_BYTES else None
        if self._columns is not None and _BATCH_KEY_BYTES in body[:64]:
            checked = self._parse_columns(body, colons)
            if checked is not None:
                return checked
        try:
            payload = orjson.loads(body)  # strict JSON: NaN, Infinity and 1e999 are errors
        except orjson.JSONDecodeError as exc:
            raise RequestRejected(422, [problem(None, None, f"body is not valid JSON: {exc}")]) from None
        if type(payload) is not dict:
            raise RequestRejected(422, [problem(None, None, "body must be a JSON object: one customer"
                                                f" record or {{\"{BATCH_KEY}\": [records]}},"
                                                f" not {_json_type(payload)}")])
        # orjson keeps the last of duplicate keys silently. Every key has one ':' after
        # it, so a body with no more ':' than the parsed objects have keys has none; only
        # otherwise (duplicates, or ':' inside strings) is it parsed again to find them.
        colons = body.count(b":") if colons is None else colons
        if colons > len(payload) and colons > _key_count(payload):  # single records: one compare
            _reject_duplicate_keys(body, BATCH_KEY in payload and BATCH_KEY not in self.allowed)
        if BATCH_KEY in payload and BATCH_KEY not in self.allowed:
            return self._parse_batch(payload)
        problems: list[dict] = []
        numeric, categories, customer_id = self.read_record(payload, 0, problems)
        if problems:
            raise RequestRejected(422, problems)
        return PredictRequest(False, [customer_id], EncodedRecords(np.array([numeric]), [[t] for t in categories]))

    def _parse_columns(self, body: bytes, colons: int | None) -> PredictRequest | None:
        """A plain, valid batch read column by column (``batch_decode``); None when it
        needs the row-by-row reading, which names each problem."""
        decoded = self._columns.decode(body)
        if decoded is None:
            return None
        keys, ids, matrix, categories, codes = decoded
        if len(ids) > self.max_batch:  # 422, as the row-by-row reading answers: the schema's maxItems
            raise RequestRejected(422, [problem(None, BATCH_KEY, f"{len(ids)} records; at most"
                                                f" {self.max_batch} per request")])
        colons = byte_count(body, b":") if colons is None else colons
        if colons > keys:  # the decoder keeps the last of duplicate keys silently
            _reject_duplicate_keys(body, True)
        return PredictRequest(True, ids, EncodedRecords(matrix, categories, codes))

    def _bound_parse_cost(self, body: bytes) -> int:
        """413 for a body with more JSON values than a full batch can hold, before parsing;
        else the body's count of ':' (counted in the same pass, for the duplicate-key check).

        Parsed, a small JSON value costs far more than its bytes (``{}`` is 3 bytes and a
        64-byte dict): 16 MiB of ``{},`` once took 500 MB and 0.3 s. Every value but the
        first follows a ',' or opens with '{' or '['; counting those three bytes (C
        speed, ~12 ms for 16 MiB) bounds the values. Separators inside strings are
        counted too, which only matters for bodies far outside any real batch.
        """
        limit = self.max_batch * (len(self.allowed) + SLACK_FIELDS) + 16
        *separators, colons = byte_counts(body, b",{[:")
        count = sum(separators)
        if count > limit:
            raise RequestRejected(413, [problem(None, None, f"body holds about {count} JSON values; a batch"
                                                f" of at most {self.max_batch} records of"
                                                f" {len(self.allowed)} fields holds at most {limit}")])
        return colons

    def _parse_batch(self, payload: dict) -> PredictRequest:
        extra = sorted(set(payload) - {BATCH_KEY})
        if extra:
            raise RequestRejected(422, [problem(None, f, "unknown field next to"
                                                f" {BATCH_KEY!r}") for f in extra])
        rows = payload[BATCH_KEY]
        if type(rows) is not list:
            raise RequestRejected(422, [problem(None, BATCH_KEY, f"must be an array of records,"
                                                f" not {_json_type(rows)}")])
        if not rows:
            raise RequestRejected(422, [problem(None, BATCH_KEY, "the batch is empty")])
        if len(rows) > self.max_batch:  # 422 like an empty batch: the schema's maxItems, not a byte cap
            raise RequestRejected(422, [problem(None, BATCH_KEY, f"{len(rows)} records; at most"
                                                f" {self.max_batch} per request")])
        fast = self._read_columns(rows)
        if fast is not None:
            return fast
        # Something is unusual: read row by row, which names every problem.
        problems: list[dict] = []
        numeric, categories, ids = [], [], []
        for r, row in enumerate(rows):
            values, texts, customer_id = self.read_record(row, r, problems)
            numeric.append(values)
            categories.append(texts)
            ids.append(customer_id)
        if problems:
            raise RequestRejected(422, problems)
        matrix = np.array(numeric, dtype=np.float64).reshape(len(rows), len(self.numeric))
        return PredictRequest(True, ids, EncodedRecords(matrix, [list(c) for c in zip(*categories)]))

    def _read_columns(self, rows: list) -> PredictRequest | None:
        """A batch of plain, valid records read with C-level loops (itemgetter, map, set)
        instead of Python code per field; None as soon as anything needs the row-by-row
        reading (which then names each problem)."""
        if not all(type(row) is dict for row in rows) or not all(map(self.allowed.issuperset, rows)):
            return None
        try:
            numeric = list(map(self._numeric_getter, rows))
            texts = list(map(self._category_getter, rows))
        except KeyError:  # some record leaves a field out: absent reads as null
            rows = [self._all_null | row for row in rows]
            numeric = list(map(self._numeric_getter, rows))
            texts = list(map(self._category_getter, rows))
        if not set(map(type, chain.from_iterable(numeric))) <= _NUMBERS_OR_NONE:
            return None
        matrix = np.array(numeric, dtype=np.float64).reshape(len(rows), len(self.numeric))  # None -> NaN
        if np.isinf(matrix).any() or np.isnan(matrix[:, self._required_numeric]).any():
            return None
        categories = [list(column) for column in zip(*texts)] or [[] for _ in self.categorical]
        if not set(map(type, chain.from_iterable(categories))) <= {str, type(None)}:
            return None
        for j in self._required_categorical:
            if None in categories[j] or not all(map(str.strip, categories[j])):
                return None
        ids = [row.get(self.id_column) for row in rows]
        if not set(map(type, ids)) <= {str, int, type(None)}:
            return None
        return PredictRequest(True, ids, EncodedRecords(matrix, categories))

    def read_record(self, row: object, r: int, problems: list[dict]
                    ) -> tuple[list[float], list[str | None], object]:
        """One record -> (numeric values, NaN for missing; category texts, None for
        missing; customer id). Problems are appended, never raised, so all are reported."""
        if type(row) is not dict:
            problems.append(problem(r, None, f"a record must be a JSON object, not {_json_type(row)}"))
            return [NAN] * len(self.numeric), [None] * len(self.categorical), None
        if not self.allowed.issuperset(row):
            for field in sorted(set(row) - self.allowed):
                problems.append(problem(r, field, "unknown field: not a feature of the deployed model"))
        numeric = []
        for name in self.numeric:
            value = row.get(name, _ABSENT)
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):
                    problems.append(problem(r, name, "must be a finite number"))
            elif kind is int:
                value = float(value)
            elif value is None or value is _ABSENT:
                value = self._gap(r, name, value, NAN, problems)
            else:
                problems.append(problem(r, name, f"must be a number, not {_json_type(value)}"))
                value = NAN
            numeric.append(value)
        texts = []
        for name in self.categorical:
            value = row.get(name, _ABSENT)
            kind = type(value)
            if kind is str:
                if name in self.required and not value.strip():
                    problems.append(problem(r, name, "must not be blank: the model never saw it missing"))
            elif kind is int:
                value = str(value)
            elif kind is float:
                # As training's validation reads numbers in a text column: 1.0 -> "1".
                value = as_text(value)
            elif value is None or value is _ABSENT:
                value = self._gap(r, name, value, None, problems)
            else:
                problems.append(problem(r, name, f"must be a string, not {_json_type(value)}"))
                value = None
            texts.append(value)
        customer_id = row.get(self.id_column)
        if customer_id is not None and type(customer_id) not in (str, int):
            problems.append(problem(r, self.id_column, f"must be a string or an integer,"
                                    f" not {_json_type(customer_id)}"))
            customer_id = None
        return numeric, texts, customer_id

    def _gap(self, r: int, name: str, value: object, missing: object, problems: list[dict]) -> object:
        """A left-out or null field: fine if the model knows what missing means, else a problem."""
        if name in self.required:
            problems.append(problem(r, name, "field required" if value is _ABSENT else
                                    "must not be null: the model never saw it missing"))
        return missing

    # -- documentation -------------------------------------------------------------------
    def json_schema(self) -> dict:
        """JSON Schema of one customer record, for the OpenAPI document."""
        properties: dict[str, dict] = {
            self.id_column: {"type": ["string", "integer", "null"],
                             "description": "echoed back as customer_id"},
            # Any value: stored rows are sent as they are (pandas writes dates as epoch ms).
            self.spec.timestamp_column: {"description": "accepted and ignored, whatever its type"},
        }
        for name in self.numeric:
            optional = name not in self.required
            properties[name] = {"type": ["number", "null"] if optional else "number",
                                "description": "missing or null: imputed as in training" if optional
                                else "required: the model never saw it missing"}
        for name in self.categorical:
            optional = name not in self.required
            entry = {"type": ["string", "number", "null"] if optional else ["string", "number"],
                     "description": "case, spaces and known aliases are normalized; an unseen"
                                    " category is accepted and encoded as in training (all zeros)"}
            if not optional:  # blank text means missing, which a required field cannot be
                entry["pattern"] = NOT_BLANK
                entry["description"] += "; blank text means missing, so it must not be blank"
            if self.categories.get(name):
                entry["examples"] = self.categories[name]
            properties[name] = entry
        return {"type": "object", "additionalProperties": False,
                "required": sorted(self.required), "properties": properties}
