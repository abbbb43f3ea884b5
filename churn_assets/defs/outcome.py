"""What a refresh decided, as the run tag ``churn_assets/outcome`` (shown in the runs list).

- ``deployed``: a new version went to production.
- ``refused``: the deployment gate refused the challenger; production stays as it was.
  Dagster still marks the run failed (the gate is a blocking check), so the tag is what
  tells a refusal from a crash.
- ``no_change``: nothing to deploy: no new data, the same model as production, or a
  challenger held because the operator pinned production.
- ``failed``: the run stopped before deciding (bad data, a source fault, killed).

Set where the decision is made when the run can say it (``deployed_model``, the
risk list's last step), and otherwise after the run from its events: by
``churn-assets materialize`` and by the failure alert sensor, so every run ends with
one, however it was launched.
"""

from __future__ import annotations

import dagster as dg

from churn_assets.health.gate_words import refusal_line

OUTCOME_TAG = "churn_assets/outcome"
OUTCOMES = ("deployed", "refused", "no_change", "failed")
GATE_CHECK = "deployment_gate"
REFUSAL_PREFIX = "deployment refused by the gate"


def tag_outcome(instance: dg.DagsterInstance, run_id: str, outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"run outcome must be one of {OUTCOMES}, not {outcome!r}")
    instance.add_run_tags(run_id, {OUTCOME_TAG: outcome})


def outcome_from_events(instance: dg.DagsterInstance, run_id: str, *, in_run: bool = False) -> str:
    """The outcome of a run as its events tell it (see the module docstring).

    ``in_run``: asked by the run's own last step, which succeeds unless it raises: a run
    without a deploy or refusal so far is then "no_change", whatever its status says now."""
    deployed = refused = False
    for record in instance.get_records_for_run(run_id=run_id, of_type={
            dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            dg.DagsterEventType.STEP_FAILURE}).records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            refused |= data.check_name == GATE_CHECK and not data.passed
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            user = getattr(data, "user_failure_data", None)
            refused |= bool(user and str(user.description or "").startswith(REFUSAL_PREFIX))
        elif data.materialization.asset_key == dg.AssetKey("deployed_model"):
            new = data.materialization.metadata.get("new_version")
            deployed |= bool(getattr(new, "value", False))
    if deployed:
        return "deployed"
    if refused:
        return "refused"
    if in_run:
        return "no_change"
    run = instance.get_run_by_id(run_id)
    return "no_change" if run is not None and run.status == dg.DagsterRunStatus.SUCCESS else "failed"


def settle_outcome(instance: dg.DagsterInstance, run_id: str, *, in_run: bool = False) -> str:
    """The run's outcome tag, set from its events if the run did not set it itself (a
    re-execution from the UI copies its parent's tags: a value equal to the parent's may
    be the parent's, so it is decided again from this run's events)."""
    run = instance.get_run_by_id(run_id)
    existing = run.tags.get(OUTCOME_TAG) if run is not None else None
    parent = instance.get_run_by_id(run.parent_run_id) if run is not None and run.parent_run_id else None
    inherited = parent is not None and parent.tags.get(OUTCOME_TAG) == existing
    if existing in OUTCOMES and not inherited:
        return existing
    outcome = outcome_from_events(instance, run_id, in_run=in_run)
    tag_outcome(instance, run_id, outcome)
    return outcome


def _comparisons(report: dict) -> dict:
    """evaluation_report's paired comparisons (its ``comparisons`` JSON), for the gate's words."""
    comparisons = report.get("comparisons")
    return comparisons if isinstance(comparisons, dict) else {}


def refusal_words(gate: dict | None, description: str | None, report: dict) -> str:
    """"refused: ROC AUC is clearly lower than the champion's by 0.012 (…); production
    stays v0007" from the gate check's ``outcomes`` metadata (``GateVerdict.to_dict()``)
    and ``evaluation_report``'s metadata (the champion and the intervals) of the run."""
    champion = report.get("champion_version")
    production = None if champion in (None, "None") else str(champion)
    if isinstance(gate, dict):
        best = report.get("best_recent")
        return refusal_line(gate, _comparisons(report), production, best if isinstance(best, dict) else None)
    verdict = str(description or "a gate rule failed").removeprefix("fail: ")
    stays = f"production stays {production}" if production else "nothing is in production yet"
    return f"refused: {verdict}; {stays}"


def metadata_values(entries) -> dict:
    """Dagster metadata entries as plain values."""
    return {k: getattr(v, "value", v) for k, v in (entries or {}).items()}


def run_refusal(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """``refusal_words`` for a run whose deployment gate failed; None if it did not."""
    check = report = None
    for record in instance.get_records_for_run(run_id=run_id, of_type={
            dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION}).records:
        data = record.event_log_entry.dagster_event.event_specific_data
        if record.event_log_entry.dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            if data.check_name == GATE_CHECK and not data.passed:
                check = data
        elif data.materialization.asset_key == dg.AssetKey("evaluation_report"):
            report = metadata_values(data.materialization.metadata)
    if check is None:
        return None
    return refusal_words(metadata_values(check.metadata).get("outcomes"), check.description, report or {})
