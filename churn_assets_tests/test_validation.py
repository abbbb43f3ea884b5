"""Bad records fail clean_features by name, and leave history and registry as they were."""

import math

import pandas as pd
import pytest

from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.sources.file import FileSource
from churn_assets.core.spec import load_spec
from churn_assets.core.validation import RecordValidationError, validate_records

from churn_assets_tests.conftest import (
    FIRST_WEEK, NEXT_WEEK, history_snapshot, production_version, registry_snapshot, run_graph,
    simulator,
)


def next_week_export(tmp_path):
    """The simulator's next week as a CSV export, the way a company would drop a file."""
    frame = simulate(SimulatorSettings(n_customers=1000), NEXT_WEEK)
    return frame[frame["snapshot_date"] == frame["snapshot_date"].max()].reset_index(drop=True)


CORRUPTIONS = {
    "missing column": (lambda f: f.drop(columns=["monthly_spend"]), "monthly_spend", "is missing"),
    "wrong dtype": (lambda f: f.assign(sessions_last_30d=["many"] * len(f)), "sessions_last_30d", "dtype"),
    "unknown target value": (
        lambda f: f.assign(churned_within_28d=f["churned_within_28d"].astype(str).where(f.index > 3, "maybe")),
        "churned_within_28d", "isin"),
    "all-null column": (lambda f: f.assign(tenure_days=math.nan), "tenure_days", "not_all_missing"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_batch_fails_clean_features_naming_the_column(case, home, tmp_path):
    assert run_graph(home, simulator(FIRST_WEEK)).success
    registry_before, history_before = registry_snapshot(home), history_snapshot(home)
    corrupt, column, words = CORRUPTIONS[case]
    export = tmp_path / "export.csv"
    corrupt(next_week_export(tmp_path)).to_csv(export, index=False)

    result = run_graph(home, FileSource(path=str(export)))
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [f.step_key for f in failures] == ["clean_features"]
    message = str(failures[0].event_specific_data.error)
    assert column in message and words in message
    assert "failure_cases" in failures[0].event_specific_data.user_failure_data.metadata
    succeeded = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert succeeded == {"raw_customers"}
    assert history_snapshot(home) == history_before
    assert registry_snapshot(home) == registry_before
    assert production_version(home) == "v0001"


def test_a_valid_export_of_the_same_week_is_accepted(home, tmp_path):
    """The corruption tests fail because of the corruption, not because files are refused."""
    assert run_graph(home, simulator(FIRST_WEEK)).success
    export = tmp_path / "export.csv"
    next_week_export(tmp_path).to_csv(export, index=False)
    assert run_graph(home, FileSource(path=str(export))).success


def test_every_failure_is_reported_at_once():
    spec = load_spec("simulator")
    frame = simulate(SimulatorSettings(n_customers=200), "2026-02-02")
    frame = frame.drop(columns=["plan"]).assign(age="old", seats=math.inf)
    with pytest.raises(RecordValidationError) as info:
        validate_records(frame, spec)
    text = str(info.value)
    for column in ("'plan' is missing", "'age'", "'seats' failed finite"):
        assert column in text
    assert set(info.value.failure_cases["column"].dropna()) >= {"age", "seats"}


def test_blank_numeric_strings_are_missing_values_not_errors():
    spec = load_spec("telco")
    frame = pd.DataFrame({"customerID": ["a", "b"], "snapshot_date": ["2026-01-05"] * 2,
                          "Churn": ["Yes", "No"], "SeniorCitizen": [0, 1], "tenure": [0, 5],
                          "MonthlyCharges": [20.0, 30.5], "TotalCharges": [" ", "152.5"],
                          **{c: ["x", "y"] for c in spec.categorical_features}})
    valid = validate_records(frame, spec)
    assert valid["TotalCharges"].isna().tolist() == [True, False]
    assert valid["_label"].tolist() == [1, 0]
