"""The Dagster definitions, built from the project settings when the code location loads."""

from __future__ import annotations

import dagster as dg

from churn_assets.defs.checks import deployment_gate
from churn_assets.defs.data import clean_features, raw_customers
from churn_assets.defs.deployment import deployed_model
from churn_assets.defs.evaluation import evaluation_report
from churn_assets.defs.io_managers import JoblibIOManager
from churn_assets.defs.model import churn_model, fitted_scaler
from churn_assets.defs.resources import (ChurnStorage, DeploymentGateRules, TrainingPlan,
                                         source_from_settings)
from churn_assets.defs.schedules import churn_refresh, weekly_refresh
from churn_assets.defs.sensors import churn_failure_alert, new_data_sensor
from churn_assets.settings import Settings, load_settings
from churn_assets.sources.base import CustomerSource

ASSETS = [raw_customers, clean_features, fitted_scaler, churn_model, evaluation_report, deployed_model]
CHECKS = [deployment_gate]


def build_resources(settings: Settings, source: CustomerSource | None = None) -> dict:
    """Resources for ``settings``; tests pass their own ``source`` and temporary home."""
    home = settings.home
    return {
        "customer_source": source or source_from_settings(settings.source),
        "storage": ChurnStorage(home=str(home)),
        "training_plan": TrainingPlan(spec=settings.spec, **settings.window.model_dump()),
        "gate_rules": DeploymentGateRules.from_rules(settings.gate_rules),
        "io_manager": dg.FilesystemIOManager(base_dir=str(home / "dagster_storage")),
        "model_io_manager": JoblibIOManager(base_dir=str(home / "artifacts")),
    }


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[churn_refresh],
        schedules=[weekly_refresh(settings)],
        sensors=[new_data_sensor(settings), churn_failure_alert],
        resources=build_resources(settings),
        # In-process: a step costs milliseconds instead of seconds of process start-up,
        # and the steps form a chain, so there is no parallelism to lose (README).
        executor=dg.in_process_executor,
    )


@dg.definitions
def definitions() -> dg.Definitions:
    """Built when the code location loads, so a long-lived code server reads the settings then."""
    return build_defs()
