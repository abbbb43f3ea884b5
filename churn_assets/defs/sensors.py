"""Sensors: refresh when enough new customer data arrived; alert when a refresh fails.

``new_customer_data`` asks the source a cheap question (``count_new``: a COUNT query, a
count endpoint) about records past the stored watermark, and requests a refresh once at
least ``min_new_records`` arrived. Its cursor remembers the newest ``updated_at`` it
already asked a refresh for, so one batch of new data starts one refresh, not one per
tick; Dagster keeps the cursor in the instance across restarts.

``churn_failure_alert`` posts every failed run (a source fault, bad data) and every
challenger the deployment gate refused (as "refused", with the rule in words and the
version that stays) to the Slack webhook in ``CHURN_ASSETS_ALERT_WEBHOOK``, and tags the
run's outcome (defs/outcome.py).
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from churn_assets.defs.alerts import WEBHOOK_ENV, failure_reason, post_alert, slack_message
from churn_assets.defs.liveness import host_tags
from churn_assets.defs.outcome import run_refusal, settle_outcome
from churn_assets.defs.resources import ChurnStorage, TrainingPlan
from churn_assets.defs.schedules import as_of_run_config, churn_refresh, refresh_in_progress
from churn_assets.settings import Settings
from churn_assets.sources.base import CustomerSource

GATE_STEP_SUFFIX = "_deployment_gate"


def new_data_sensor(settings: Settings) -> dg.SensorDefinition:
    options = settings.sensor
    threshold = options.min_new_records
    # Polling the simulator means simulating; only real sources get the sensor by default.
    enabled = options.enabled if options.enabled is not None else settings.source.kind in ("http", "sql")

    @dg.sensor(name="new_customer_data", job=churn_refresh,
               minimum_interval_seconds=options.interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
               description=f"Refresh once at least {threshold} new customer records arrived.")
    def new_customer_data(context: dg.SensorEvaluationContext,
                          customer_source: dg.ResourceParam[CustomerSource],
                          storage: ChurnStorage, training_plan: TrainingPlan):
        running = refresh_in_progress(context.instance)
        if running:
            return dg.SkipReason(f"refresh {running} is queued or running; it will take the new data")
        watermark = storage.history().state().get("watermark")
        found = customer_source.count_new(training_plan.feature_spec(), watermark)
        cursor = json.loads(context.cursor) if context.cursor else {}
        if found.count < threshold:
            return dg.SkipReason(f"{found.count} new records past watermark {watermark};"
                                 f" waiting for {threshold}")
        if found.newest is not None and found.newest == cursor.get("requested_up_to"):
            return dg.SkipReason(f"a refresh for records up to {found.newest} was already requested")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(
                run_key=f"new-data-{found.newest}",
                run_config=as_of_run_config(dt.datetime.now(dt.timezone.utc)),
                tags={"churn_assets/new_records": str(found.count), **host_tags()})],
            cursor=json.dumps({"requested_up_to": found.newest, "new_records": found.count,
                               "watermark": watermark}),
        )

    return new_customer_data


def unfinished_step(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The step a run had started and not finished: where a killed run died."""
    finished = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                dg.DagsterEventType.STEP_SKIPPED}
    open_steps: dict[str, None] = {}
    for record in instance.get_records_for_run(
            run_id=run_id, of_type={dg.DagsterEventType.STEP_START, *finished}).records:
        event = record.event_log_entry.dagster_event
        if event.event_type == dg.DagsterEventType.STEP_START:
            open_steps[event.step_key] = None
        else:
            open_steps.pop(event.step_key, None)
    return next(reversed(open_steps), None) if open_steps else None


def describe_failure(context: dg.RunFailureSensorContext) -> tuple[str | None, str]:
    """(failing step, reason) of a failed run; a refusal by the gate in plain words, with
    the version that stays in production.

    A run whose process died (kill -9, OOM, reboot) has no step failure: run monitoring
    or ``churn-assets materialize`` marked it failed. The alert then names the step it
    died in and says so, instead of quoting Dagster's worker-status message alone.
    """
    steps = context.get_step_failure_events()
    if not steps:
        message = context.failure_event.message or "run failed before any step ran"
        died_in = unfinished_step(context.instance, context.dagster_run.run_id)
        if died_in:
            return died_in, (f"the run's process died while `{died_in}` was running (killed or"
                             f" crashed; nothing after it ran): {message}")
        return None, message
    step = steps[0].step_key
    refusal = run_refusal(context.instance, context.dagster_run.run_id)
    if step.endswith(GATE_STEP_SUFFIX) and refusal:
        return step, refusal
    return step, failure_reason(steps[0].event_specific_data.error)


# monitor_all_code_locations: a run started by `churn-assets materialize` (execute_job in
# the CLI process) carries no code-location origin, and a sensor watching only its own
# location never sees it fail; the instance is this project's alone, so "all" is ours.
@dg.run_failure_sensor(name="churn_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING,
                       monitor_all_code_locations=True,
                       description=f"Post failed and refused runs to the Slack webhook in ${WEBHOOK_ENV}.")
def churn_failure_alert(context: dg.RunFailureSensorContext):
    run = context.dagster_run
    # Dagster calls a refused run failed (the gate is a blocking check); the outcome tag,
    # set here for runs that could not set it themselves, tells the two apart.
    outcome = settle_outcome(context.instance, run.run_id)
    step, reason = describe_failure(context)
    payload = slack_message(run.run_id, run.job_name, step, reason, outcome=outcome)
    context.log.error(payload["text"])
    if not post_alert(payload):
        # The run stays FAILED in Dagster with its own error; this only adds a warning.
        context.log.warning(f"failure alert not delivered (is {WEBHOOK_ENV} set and reachable?)")
