"""Bad records fail clean_features by name, and leave history and registry as they were."""

import json
import math
import re

import pandas as pd
import pytest

from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.sources.file import FileSource
from churn_assets.core.spec import FeatureSpec, SpecError, load_spec
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
    # Bounds declared in the spec (core/specs/simulator.json): values no customer can have.
    "negative age and spend": (lambda f: f.assign(age=f["age"].where(f.index > 2, -41),
                                                  monthly_spend=-f["monthly_spend"]),
                               "monthly_spend", "column 'age' failed its bounds (min 16)"),
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
    # The risk list is checked against production first, whatever the batch holds.
    assert succeeded == {"raw_customers", "churn_scores.rescore_if_stale"}
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
    valid = validate_records(frame.assign(gender=["Female", "Male"], Contract=["One year", "Two year"],
                                          **{c: ["Yes", "No"] for c in ("Partner", "Dependents", "PhoneService",
                                                                       "PaperlessBilling")}), spec)
    assert valid["TotalCharges"].isna().tolist() == [True, False]
    assert valid["_label"].tolist() == [1, 0]


# -- bounds in the feature spec ---------------------------------------------------------------

def test_the_shipped_specs_bounds_hold_on_their_own_data(telco_csv):
    # A year of a 20,000-customer simulation, and the whole Telco export as the example reads it.
    simulated = simulate(SimulatorSettings(n_customers=20_000), "2026-12-28")
    assert len(validate_records(simulated, load_spec("simulator"))) == len(simulated)
    telco = FileSource(path=str(telco_csv), snapshot_weeks=10).fetch(load_spec("telco"), None).records
    assert len(validate_records(telco, load_spec("telco"))) == 7043
    assert load_spec("simulator").bounds_of("age") == {"min": 16.0, "max": 120.0}
    assert load_spec("telco").bounds_of("SeniorCitizen") == {"allowed": [0.0, 1.0]}


def test_every_value_outside_its_bounds_is_named_with_the_bound():
    spec = load_spec("telco")
    frame = FileSource(path="examples/data/telco.csv", snapshot_weeks=2).fetch(spec, None).records.head(50)
    frame.loc[0, "tenure"] = -3
    frame.loc[1, "SeniorCitizen"] = 2
    frame.loc[2, "Contract"] = "Three year"
    frame.loc[3, "gender"] = " FEMALE "  # trimmed and case-folded: still allowed
    frame.loc[4, "tenure"] = 5000
    with pytest.raises(RecordValidationError) as info:
        validate_records(frame, spec)
    text = str(info.value)
    assert "column 'tenure' failed its bounds (min 0): 1 row(s), e.g. -3.0" in text
    assert "column 'tenure' failed its bounds (max 1200): 1 row(s), e.g. 5000.0" in text
    assert "column 'SeniorCitizen' failed its bounds (allowed: 0, 1): 1 row(s), e.g. 2.0" in text
    assert ("column 'Contract' failed its bounds (allowed: month-to-month, one year, two year): 1 row(s),"
            " e.g. 'Three year'") in text
    assert "gender" not in text
    assert sorted(info.value.failure_cases["index"]) == [0, 1, 2, 4]


def test_allowed_categories_are_judged_after_the_aliases():
    spec_dict = load_spec("simulator").to_dict()
    spec_dict["bounds"] = {"plan": {"allowed": ["Basic", "pro", "enterprise"]}}
    spec = FeatureSpec.from_dict(spec_dict)
    frame = simulate(SimulatorSettings(n_customers=200), "2026-02-02")
    # The simulator writes "Professional" and "basic " too: aliases and trimming make them pro and basic.
    assert {"Professional", "basic "} <= set(frame["plan"])
    assert len(validate_records(frame, spec)) == len(frame)
    with pytest.raises(RecordValidationError, match="allowed: basic, enterprise, pro"):
        validate_records(frame.assign(plan="platinum"), spec)


@pytest.mark.parametrize("bounds, message", [
    ({"agee": {"min": 0}}, "bounds.agee: not a feature column"),
    ({"age": {"min": 10, "max": 5}}, "bounds.age: min (10.0) exceeds max (5.0)"),
    ({"plan": {"min": 0}}, "bounds.plan: min and max are for numeric columns"),
    ({"age": {}}, "bounds.age: give min, max and/or allowed"),
    ({"age": {"allowed": []}}, "bounds.age: allowed must list at least one value"),
    ({"age": {"minimum": 0}}, "bounds.age.minimum: unknown key"),
    ({"age": {"min": "zero"}}, "bounds.age.min: "),
])
def test_bounds_that_cannot_be_used_are_named_when_the_spec_loads(tmp_path, bounds, message):
    spec_dict = load_spec("simulator").to_dict()
    spec_dict["bounds"] = bounds
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_dict))
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(str(path))


def test_a_spec_without_bounds_keeps_its_dict_form():
    # Fingerprints and stored manifests compare spec dicts: no bounds, no new key.
    spec_dict = load_spec("simulator").to_dict()
    del spec_dict["bounds"]
    assert "bounds" not in FeatureSpec.from_dict(spec_dict).to_dict()
