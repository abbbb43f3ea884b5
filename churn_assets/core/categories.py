"""How raw values become category text: one rule for validation, training and serving.

Validation, the fitted preprocessing, the serving request schema and the serving fast
path must read ``" Credit Card"``, ``"credit card"`` and ``1.0`` the same way, or a model
would score a customer differently over HTTP than in the evaluation. So the rule lives
here once and every reader calls it.
"""

from __future__ import annotations

import math

import pandas as pd


def as_text(value: object) -> str | None:
    """A raw value as stripped text; whole floats read as integers (``1.0`` -> ``"1"``).

    Missing values (None, NaN, pandas NA) stay ``None``. Exports often write integer
    codes as floats once a column has a gap, so ``1.0`` and ``"1"`` must be one label.
    """
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    elif hasattr(value, "dtype") and getattr(value, "dtype").kind == "f":  # numpy floats
        return as_text(float(value))
    return str(value).strip()


def category_key(text: str | None) -> str | None:
    """Case- and space-insensitive form of a category label; blank means missing (None)."""
    if text is None:
        return None
    key = text.strip().casefold()
    return key or None


def normalize_category(value: object, aliases: dict[str, str]) -> str | None:
    """Canonical category of a raw value: text, case-folded, aliases resolved; None if missing."""
    key = category_key(as_text(value))
    return None if key is None else aliases.get(key, key)
