"""A batch body read column by column: typed decoding, then whole columns at once.

A 10,000-record batch read through ``orjson.loads`` builds 10,000 dicts and 160,000
values, and the checks then walk them again; that was most of a batch request (the
model itself is a few milliseconds). Here msgspec decodes the body straight into one
typed struct per record, so the types are checked while parsing (a number field takes
a number or null, an unknown field is an error). The structs' values go into one
object array in C (``astuple``); the numbers become a float64 matrix with one cast,
each category is factorized once (the checks look at its few distinct values, the
model takes its codes), and no Python code runs per value. Whatever this reading does
not accept outright (a type error, a required gap, a blank category, a number sent for
a category, an integer id outside int64) returns None, and the caller reads the body
the row-by-row way, which names every problem.
"""

from __future__ import annotations

import struct
from itertools import chain
from typing import Annotated

import msgspec
import numpy as np
import pandas as pd
from msgspec.structs import astuple

UNSET = msgspec.UNSET
_TEXT_OR_GAP = frozenset({str, type(None), msgspec.UnsetType})
# A left-out number decodes to this NaN. Its payload bits come from nowhere else (JSON
# has no NaN, and the cast to float64 turns null's None into the plain NaN), so one
# vectorised compare over the numeric matrix counts the left-out numbers.
ABSENT_BITS = 0x7FF8_0000_0000_0BAD
ABSENT_NUMBER = struct.unpack("<d", struct.pack("<Q", ABSENT_BITS))[0]
# Integer ids msgspec reads as int64; larger ones (which orjson reads as uint64 up to
# 2**64 - 1 and as a float beyond) go to the row-by-row reading, which decides on them.
ID_INT = Annotated[int, msgspec.Meta(ge=-2**63, le=2**63 - 1)]


def _payload_survives() -> bool:
    """Whether NumPy's cast keeps ABSENT_NUMBER's payload (x86-64 and ARM do); if not,
    the left-out numbers are counted the slower way, by identity."""
    bits = np.array([ABSENT_NUMBER, None], dtype=object).astype(np.float64).view(np.uint64)
    return int(bits[0]) == ABSENT_BITS and int(bits[1]) != ABSENT_BITS


class ColumnDecoder:
    """Decodes ``{"customers": [record, ...]}`` for one record schema into columns."""

    def __init__(self, batch_key: str, id_column: str, timestamp_column: str,
                 numeric: tuple[str, ...], categorical: tuple[str, ...],
                 required_numeric: list[int], required_categorical: list[int]):
        unset = msgspec.UnsetType
        fields = [(id_column, str | ID_INT | None | unset, UNSET), (timestamp_column, str | None | unset, UNSET)]
        fields += [(name, float | None, ABSENT_NUMBER) for name in numeric]
        fields += [(name, str | int | float | None | unset, UNSET) for name in categorical]
        fields = list({name: (name, kind, default) for name, kind, default in fields}.values())
        record = msgspec.defstruct("CustomerRecord", fields, forbid_unknown_fields=True, gc=False)
        batch = msgspec.defstruct("CustomerBatch", [(batch_key, list[record])], forbid_unknown_fields=True)
        self.decoder = msgspec.json.Decoder(batch)
        self.batch_key = batch_key
        self.names = [name for name, _, _ in fields]
        self.id_at = self.names.index(id_column)
        self.numeric_at = [self.names.index(n) for n in numeric]
        self.categorical_at = [self.names.index(c) for c in categorical]
        # The numbers are neighbours in the struct: one slice (a view), no gathered copy.
        first = self.numeric_at[0] if self.numeric_at else 0
        contiguous = self.numeric_at == list(range(first, first + len(self.numeric_at)))
        self.numeric_columns = slice(first, first + len(self.numeric_at)) if contiguous else self.numeric_at
        # The id and the timestamp, read as UNSET when left out (as are the categories,
        # checked on their distinct values; the numbers read as ABSENT_NUMBER).
        self.unset_at = [i for i in range(len(self.names)) if i not in self.numeric_at + self.categorical_at]
        self.used_at = frozenset([self.id_at])  # the timestamp is only counted
        self.required_numeric = required_numeric
        self.required_categorical = required_categorical
        self.n_numeric = len(numeric)
        self.bits_count = _payload_survives()

    def decode(self, body: bytes) -> tuple[int, list, np.ndarray, list[list], list[tuple]] | None:
        """(keys in the body's objects, customer ids, numeric matrix float64 (n, n_numeric)
        with NaN for gaps, category columns (lists) with None for gaps, and each category
        column factorized: codes, distinct texts), or None when the body needs the
        row-by-row reading."""
        try:
            rows = getattr(self.decoder.decode(body), self.batch_key)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if not rows:
            return None
        # Every record's values (msgspec's astuple, in C) into one object array, the
        # numbers then cast to float64 at once (None -> NaN) and the other fields sliced
        # out as lists: 17% less than one attrgetter pass per field into lists (measured).
        n, width = len(rows), len(self.names)
        table = np.fromiter(chain.from_iterable(map(astuple, rows)), dtype=object, count=n * width)
        table = table.reshape(n, width)
        absent = 0  # fields left out, counted so that the caller can spot duplicate keys
        numbers = table[:, self.numeric_columns]
        matrix = numbers.astype(np.float64)
        if self.bits_count:
            left_out = matrix.view(np.uint64) == ABSENT_BITS
            gaps = int(np.count_nonzero(left_out))
            if gaps:
                absent += gaps
                matrix[left_out] = np.nan  # the plain NaN, as every other reading gives
        else:
            # msgspec hands out the one default object: counted by identity (NaN != NaN).
            absent += numbers.ravel().tolist().count(ABSENT_NUMBER)
        if self.required_numeric and np.isnan(matrix[:, self.required_numeric]).any():
            return None
        columns = {i: table[:, i].tolist() for i in self.unset_at}
        for i in self.unset_at:  # the id, and the timestamp (counted, never used)
            gaps = columns[i].count(UNSET)
            if gaps:
                absent += gaps
                if i in self.used_at:
                    columns[i] = [None if value is UNSET else value for value in columns[i]]
        categories, factorized = [], []
        for j, i in enumerate(self.categorical_at):
            # Factorized here, once: the checks look at the few distinct values, and the
            # model takes the codes as they are (``EncodedRecords.codes``).
            codes, uniques = pd.factorize(table[:, i], use_na_sentinel=True)  # None -> -1
            uniques = uniques.tolist()
            if not set(map(type, uniques)) <= _TEXT_OR_GAP:
                return None  # numbers for a category: read as text by the row-by-row rules
            column = table[:, i].tolist()
            if UNSET in uniques:
                at = uniques.index(UNSET)
                absent += int(np.count_nonzero(codes == at))
                uniques[at] = None  # left out reads as missing, like null
                column = [None if value is UNSET else value for value in column]
            if j in self.required_categorical and (
                    None in uniques or (codes < 0).any() or not all(v.strip() for v in uniques)):
                return None
            categories.append(column)
            factorized.append((codes, uniques))
        keys = 1 + len(rows) * len(self.names) - absent  # the body's key, each record's fields
        return keys, columns[self.id_at], matrix, categories, factorized
