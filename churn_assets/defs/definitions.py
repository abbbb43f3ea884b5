"""The Dagster definitions, built from the project settings when the code location loads."""

from __future__ import annotations

import dagster as dg

from churn_assets.defs.backtest import backtest_report_asset, churn_backtest
from churn_assets.defs.checks import deployment_gate
from churn_assets.defs.data import clean_features, raw_customers
from churn_assets.defs.deployment import ModelCard, deployed_model
from churn_assets.defs.evaluation import evaluation_report
from churn_assets.defs.io_managers import JoblibIOManager, step_output_io_manager
from churn_assets.defs.model import churn_model, fitted_scaler
from churn_assets.defs.model_health import model_health
from churn_assets.defs.monitoring import MonitoringPlan, data_drift, model_health_sensor
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules, TrainingPlan
from churn_assets.defs.scores import RiskList, churn_scores
from churn_assets.defs.schedules import churn_refresh, weekly_refresh
from churn_assets.defs.sourcing import source_from_settings
from churn_assets.defs.sensors import churn_failure_alert, new_data_sensor
from churn_assets.settings import Settings, load_settings
from churn_assets.sources.base import CustomerSource

ASSETS = [raw_customers, clean_features, fitted_scaler, churn_model, evaluation_report, deployed_model,
          churn_scores, model_health]
CHECKS = [deployment_gate, data_drift]


def build_resources(settings: Settings, source: CustomerSource | None = None) -> dict:
    """Resources for ``settings``; tests pass their own ``source`` and temporary home.

    ``settings.home`` is a ``Path`` or, for an ``s3://`` home, a ``UPath``: everything below
    it, step outputs included, then lives on object storage (docs/deploy.md).
    """
    home = settings.home
    return {
        "customer_source": source or source_from_settings(settings.source),
        "storage": ChurnStorage(home=str(home)),
        "training_plan": TrainingPlan(spec=settings.spec, **settings.window.model_dump()),
        "gate_rules": DeploymentGateRules.from_rules(settings.gate_rules),
        "monitoring": MonitoringPlan.from_settings(settings.monitoring),
        "io_manager": step_output_io_manager(home / "dagster_storage"),
        "model_io_manager": JoblibIOManager(base_dir=str(home / "artifacts")),
        "risk_list": RiskList(**settings.scores.model_dump()),
        "model_card": ModelCard(intended_use=settings.intended_use()),
    }


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor named in ``[dagster] executor``.

    In-process by default: a step costs milliseconds instead of seconds of process
    start-up, and the steps form a chain, so there is no parallelism to lose (README).
    """
    chosen = settings.dagster
    if chosen.executor == "multiprocess":
        return dg.multiprocess_executor
    if chosen.executor == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError:
            raise RuntimeError("[dagster] executor = 'celery' needs the distributed extra:"
                               " pip install -e '.[distributed]'") from None
        # Broker and backend URLs are read from their variables when a run starts, so
        # they never sit in the run's stored config.
        backend_env = chosen.celery_backend_env or chosen.celery_broker_env
        return celery_executor.configured(
            {"broker": {"env": chosen.celery_broker_env}, "backend": {"env": backend_env},
             "config_source": {"task_default_queue": chosen.celery_queue}},
            name="celery")
    return dg.in_process_executor


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    return dg.Definitions(
        assets=[*ASSETS, backtest_report_asset],
        asset_checks=CHECKS,
        jobs=[churn_refresh, churn_backtest],
        schedules=[weekly_refresh(settings)],
        sensors=[new_data_sensor(settings), churn_failure_alert,
                 model_health_sensor(settings)],
        resources=build_resources(settings),
        executor=build_executor(settings),
    )


@dg.definitions
def definitions() -> dg.Definitions:
    """Built when the code location loads, so a long-lived code server reads the settings then."""
    return build_defs()
