"""The refresh's thread budget reaches the thread that runs the steps, and only the run."""

import dagster as dg
import pytest
from threadpoolctl import threadpool_info

from churn_assets.defs.resources import TrainingPlan
from churn_assets.defs.threads import ENV_VAR, available_cpus, thread_budget_size


def openmp_threads() -> set[int]:
    import sklearn.utils._openmp_helpers  # noqa: F401  (loads the OpenMP runtime)

    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"}


def threads_seen_by_a_step(monkeypatch, budget: str) -> set[int]:
    seen = {}

    @dg.asset
    def numeric_step(training_plan: TrainingPlan) -> None:
        seen["threads"] = openmp_threads()

    monkeypatch.setenv(ENV_VAR, budget)
    assert dg.materialize([numeric_step], resources={"training_plan": TrainingPlan()}).success
    return seen["threads"]


def test_the_budget_applies_inside_the_steps_of_a_run_and_is_lifted_after(monkeypatch):
    before = openmp_threads()  # conftest pins OMP_NUM_THREADS=1 for the test process
    assert threads_seen_by_a_step(monkeypatch, "2") == {2}
    assert threads_seen_by_a_step(monkeypatch, "1") == {1}
    assert openmp_threads() == before


def test_budget_values(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert thread_budget_size() == available_cpus()
    assert thread_budget_size("auto") == available_cpus()
    assert thread_budget_size(3) == 3
    assert 1 <= thread_budget_size("load") <= available_cpus()
    for bad in ("-1", "two"):
        monkeypatch.setenv(ENV_VAR, bad)
        with pytest.raises(ValueError, match=ENV_VAR):
            thread_budget_size()
