"""The weekly refresh job and its schedule."""

from __future__ import annotations

import dagster as dg

from churn_assets.settings import Settings

churn_refresh = dg.define_asset_job(
    "churn_refresh",
    selection=dg.AssetSelection.groups("churn"),
    description="Collect, validate, retrain, evaluate against the champion, deploy if the gate passes.",
)


def weekly_refresh(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_refresh",
        job=churn_refresh,
        cron_schedule=settings.cron,
        execution_timezone=settings.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refresh the churn model ({settings.cron}, {settings.timezone}).",
    )
