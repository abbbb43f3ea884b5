"""The backtest from Dagster and the CLI: which records it replays, and the job that runs it.

``backtest_records`` reads what a replay needs without writing anything: the simulator
and the file source are read as of the last date whose labels the replay judges; for
the HTTP and SQL sources (which answer "what changed since", not "what was true then")
the stored history is replayed. ``churn_backtest`` is a job launchable from the UI with
its dates as run config; it reports to the ``backtest_report`` asset, which no refresh
materializes (an external asset: ``--select '*'`` leaves it alone).
"""

import datetime as dt

import dagster as dg
import pandas as pd
from pydantic import Field

from churn_assets.core.spec import FeatureSpec
from churn_assets.core.training import MODEL_FAMILIES
from churn_assets.core.validation import validate_records
from churn_assets.defs.resources import ChurnStorage, DeploymentGateRules, TrainingPlan
from churn_assets.health import backtest_report
from churn_assets.health.backtest import BacktestPlan, replay
from churn_assets.health.plots import png_markdown
from churn_assets.sources.base import CustomerSource
from churn_assets.sources.file import FileSource
from churn_assets.sources.simulator import SimulatorSource


class BacktestError(ValueError):
    """The replay cannot run as asked; the message says why."""


def backtest_plan(start: str, end: str, families, seed: int, training_plan: TrainingPlan,
                  gate_rules: DeploymentGateRules, source: CustomerSource) -> BacktestPlan:
    try:
        first, last = (pd.Timestamp(dt.date.fromisoformat(d)) for d in (start, end))
    except ValueError:
        raise BacktestError(f"backtest dates must be YYYY-MM-DD, got {start!r} and {end!r}") from None
    if last < first:
        raise BacktestError(f"the backtest ends ({end}) before it starts ({start})")
    unknown = sorted(set(families) - set(MODEL_FAMILIES))
    if unknown or not families:
        raise BacktestError(f"unknown model families {unknown or '(none given)'}; choose from {list(MODEL_FAMILIES)}")
    scenario = getattr(source, "scenario", None)
    scenario = None if scenario in (None, "stable") else scenario
    return BacktestPlan(first, last, families=tuple(families), seed=seed, window=training_plan.window_plan(),
                        rules=gate_rules.gate_rules(), recent_versions=gate_rules.recent_versions,
                        scenario=scenario,
                        event_date=pd.Timestamp(source.scenario_start) if scenario else None)


def backtest_records(source: CustomerSource, storage: ChurnStorage, spec: FeatureSpec,
                     plan: BacktestPlan) -> tuple[pd.DataFrame, pd.Timestamp, str]:
    """(validated records with ``_label``, the day they are known on, where they came from)."""
    wanted = plan.end + pd.Timedelta(weeks=plan.realized_weeks, days=spec.label_horizon_days)
    if isinstance(source, SimulatorSource):
        # Deterministic: the simulated customers of any date can be had.
        batch = source.fetch(spec, None, as_of=wanted)
        records, as_of, where = batch.records, batch.as_of, batch.description
    elif isinstance(source, FileSource):
        batch = source.fetch(spec, None)
        records, as_of, where = batch.records, batch.as_of, batch.description
    else:
        records = storage.history().load()
        if records is None or records.empty:
            raise BacktestError(f"{source.describe()} cannot be read as of past dates, and the stored history"
                                f" under {storage.root} is empty: run a refresh first")
        stamp = storage.history().state().get("as_of")
        as_of = pd.Timestamp(stamp) if stamp else pd.to_datetime(records[spec.timestamp_column]).max()
        where = f"the stored history ({len(records)} snapshots) of {source.describe()}"
    return validate_records(records, spec), pd.Timestamp(as_of).normalize(), where


def run_backtest(source: CustomerSource, storage: ChurnStorage, training_plan: TrainingPlan,
                 gate_rules: DeploymentGateRules, start: str, end: str, families, seed: int,
                 progress=None) -> dict:
    spec = training_plan.feature_spec()
    plan = backtest_plan(start, end, families, seed, training_plan, gate_rules, source)
    records, known_on, where = backtest_records(source, storage, spec, plan)
    result = replay(records, spec, plan, known_on, progress=progress)
    result["plan"]["source"] = where
    result["plan"]["known_on"] = str(known_on.date())
    return result


class BacktestConfig(dg.Config):
    """Run config of ``churn_backtest``: the weeks to replay."""

    start: str = Field(description="first weekly as_of to replay, YYYY-MM-DD")
    end: str = Field(description="last weekly as_of to replay, YYYY-MM-DD")
    families: list[str] = Field(default_factory=lambda: list(MODEL_FAMILIES))
    seed: int = 42


backtest_report_asset = dg.AssetSpec(
    "backtest_report", group_name="backtest", kinds={"pandas"},
    description="The newest replay of the weekly policy (churn_backtest): realized ROC AUC of the gate,"
                " always-deploy and never-retrain policies, holdout bias, estimate coverage.")


@dg.op(description="Replay the weekly policy between two dates in memory; reports to backtest_report.")
def replay_weeks(context: dg.OpExecutionContext, config: BacktestConfig,
                 customer_source: dg.ResourceParam[CustomerSource], storage: ChurnStorage,
                 training_plan: TrainingPlan, gate_rules: DeploymentGateRules) -> dict:
    try:
        result = run_backtest(customer_source, storage, training_plan, gate_rules, config.start, config.end,
                              config.families, config.seed, progress=context.log.info)
    except (BacktestError, ValueError) as exc:
        raise dg.Failure(description=f"backtest: {exc}", allow_retries=False) from None
    images = backtest_report.plots(result)
    summary, policies = result["summary"], result["policies"]
    metadata = {"report": dg.MetadataValue.md(backtest_report.render_markdown(result, {}))}
    metadata.update({f"plot_{name}": dg.MetadataValue.md(png_markdown(png, name)) for name, png in images.items()})
    metadata.update({f"{name}_mean_realized_roc_auc": float(p["mean_realized_roc_auc"] or float("nan"))
                     for name, p in policies.items()})
    metadata.update({"estimate_coverage": float(summary["estimate_coverage"] or float("nan")),
                     "estimate_mae": float(summary["estimate_mae"] or float("nan")),
                     "weeks": len(result["weeks"]), "from": config.start, "to": config.end})
    context.log_event(dg.AssetMaterialization(asset_key=backtest_report_asset.key, metadata=metadata,
                                              description=f"backtest {config.start} .. {config.end}"))
    return result


@dg.job(description="Replay the weekly refresh over past weeks (dates as run config) without touching"
                    " production; see the backtest_report asset.",
        executor_def=dg.in_process_executor)
def churn_backtest():
    replay_weeks()
