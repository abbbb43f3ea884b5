"""The weekly refresh job and its schedule."""

from __future__ import annotations

import dagster as dg

from churn_assets.defs.liveness import host_tags, run_liveness
from churn_assets.settings import Settings

REFRESH_TAG = "churn_assets/refresh"
# Runs that hold (or will soon hold) the customer history and registry.
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]

churn_refresh = dg.define_asset_job(
    "churn_refresh",
    selection=dg.AssetSelection.groups("churn"),
    description="Collect, validate, retrain, evaluate against the champion, deploy if the gate passes.",
    # The instance's run queue allows one run with this tag at a time (cli.DAGSTER_YAML).
    tags={REFRESH_TAG: "true"},
)


def refresh_in_progress(instance: dg.DagsterInstance) -> str | None:
    """The id of a refresh that is queued or running, if any.

    Two refreshes at once would race on the watermark and the production pointer; the
    run queue limit stops a second one from starting, and the schedule and sensors
    check here too, so they do not even queue one behind a running refresh.

    A run whose process is gone (killed with SIGKILL, the machine rebooted) stays
    STARTED in Dagster until run monitoring marks it failed; it is not in progress, so it
    is skipped here (``defs.liveness``), and one dead run cannot stop the schedule.
    """
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=churn_refresh.name, statuses=ACTIVE),
                             limit=20)
    for run in runs:
        if run_liveness(instance, run).alive:
            return run.run_id
    return None


def dead_refreshes(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, str]]:
    """Refreshes Dagster still counts as active whose process is gone, with the reason."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=churn_refresh.name, statuses=ACTIVE),
                             limit=20)
    verdicts = [(run, run_liveness(instance, run)) for run in runs]
    return [(run, verdict.reason) for run, verdict in verdicts if not verdict.alive]


def as_of_run_config(day) -> dict:
    """Run config that pins the data's "today" of a run to ``day`` (a date or datetime)."""
    return {"ops": {"raw_customers": {"config": {"as_of": f"{day:%Y-%m-%d}"}}}}


def weekly_refresh(settings: Settings) -> dg.ScheduleDefinition:
    cron, timezone = settings.schedule.cron, settings.schedule.timezone

    @dg.schedule(name="weekly_refresh", job=churn_refresh, cron_schedule=cron,
                 execution_timezone=timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"Refresh the churn model ({cron}, {timezone}).")
    def weekly_refresh_schedule(context: dg.ScheduleEvaluationContext):
        running = refresh_in_progress(context.instance)
        if running:
            return dg.SkipReason(f"refresh {running} is queued or running")
        # The tick's own date, not the code server's: a late or replayed tick still
        # refreshes as of the day it was scheduled for.
        return dg.RunRequest(run_config=as_of_run_config(context.scheduled_execution_time),
                             tags=host_tags())

    return weekly_refresh_schedule
