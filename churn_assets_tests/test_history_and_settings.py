"""History upserts and feature-spec errors."""

import pandas as pd
import pytest

from churn_assets.storage.history import CustomerHistory
from churn_assets.core.spec import SpecError, load_spec

KEYS = ["customer_id", "snapshot_date"]


def frame(rows):
    return pd.DataFrame(rows, columns=["customer_id", "snapshot_date", "spend", "churned"])


def test_upsert_counts_inserts_updates_and_unchanged(tmp_path):
    history = CustomerHistory(tmp_path)
    first = frame([("a", "2026-01-05", 1.0, "0"), ("b", "2026-01-05", 2.0, "0")])
    assert history.upsert(first, KEYS, state={"watermark": "w1"}).inserted == 2
    second = frame([("a", "2026-01-05", 1.0, "1"), ("b", "2026-01-05", 2.0, "0"), ("c", "2026-01-05", 3.0, "0")])
    summary = history.upsert(second, KEYS, state={"watermark": "w2"})
    assert (summary.inserted, summary.updated, summary.unchanged, summary.total_rows) == (1, 1, 1, 3)
    stored = history.load().set_index("customer_id")
    assert stored.loc["a", "churned"] == "1"
    assert history.state() == {"watermark": "w2"}


def test_upsert_rejects_unknown_columns_and_keeps_history(tmp_path):
    history = CustomerHistory(tmp_path)
    history.upsert(frame([("a", "2026-01-05", 1.0, "0")]), KEYS, state={"watermark": "w1"})
    before = {f.name: f.read_bytes() for f in history.weeks_dir.iterdir()}
    bad = frame([("b", "2026-01-05", 1.0, "0")]).assign(surprise=1)
    with pytest.raises(ValueError, match="surprise"):
        history.upsert(bad, KEYS, state={"watermark": "w2"})
    assert {f.name: f.read_bytes() for f in history.weeks_dir.iterdir()} == before
    assert history.state() == {"watermark": "w1"}


def test_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(SpecError, match="no feature spec 'nosuch'"):
        load_spec("nosuch")
    bad = tmp_path / "spec.json"
    bad.write_text('{"name": "x", "id_column": "id"}')
    with pytest.raises(SpecError, match="target_column: Field required"):
        load_spec(str(bad))
    assert load_spec("telco").positive_label == "Yes"
