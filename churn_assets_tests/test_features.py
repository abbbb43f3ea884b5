"""Preprocessing: one transform, fitted once, the same column set every week."""

import numpy as np
import pandas as pd

from churn_assets.core.features import build_preprocessor
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.core.spec import load_spec


def test_column_set_is_fixed_whatever_categories_a_week_brings():
    spec = load_spec("simulator")
    frame = simulate(SimulatorSettings(n_customers=500), "2026-03-02")
    preprocessor = build_preprocessor(spec).fit(frame)
    width = preprocessor.transform(frame).shape[1]
    week = frame.tail(50).copy()
    week["country"] = "Atlantis"            # a category never seen in training
    week["plan"] = np.nan                   # missing values
    week.loc[week.index[:5], "payment_method"] = "  CC "  # a messy alias
    out = preprocessor.transform(week)
    assert out.shape == (50, width)
    assert np.isfinite(out).all()
    names = list(preprocessor.get_feature_names_out())
    country_cols = [i for i, n in enumerate(names) if n.startswith("categorical__country_")]
    assert out[:, country_cols].sum() == 0  # unseen category: all-zero one-hot block


def test_messy_spellings_map_to_one_category():
    spec = load_spec("simulator")
    frame = simulate(SimulatorSettings(n_customers=500), "2026-03-02")
    preprocessor = build_preprocessor(spec).fit(frame)
    one_hot = preprocessor.named_steps["columns"].named_transformers_["categorical"].named_steps["one_hot"]
    categories = dict(zip(spec.categorical_features, one_hot.categories_))
    assert sorted(categories["payment_method"]) == ["bank transfer", "cash on delivery", "credit card", "paypal"]
    assert sorted(categories["country"]) == ["ca", "de", "fr", "uk", "us"]
    assert sorted(categories["plan"]) == ["basic", "enterprise", "pro"]


def test_transform_has_no_hidden_state():
    spec = load_spec("simulator")
    frame = simulate(SimulatorSettings(n_customers=300), "2026-02-02")
    preprocessor = build_preprocessor(spec).fit(frame)
    first = preprocessor.transform(frame.head(100))
    preprocessor.transform(pd.concat([frame.tail(100)] * 3))
    np.testing.assert_array_equal(preprocessor.transform(frame.head(100)), first)
