"""A refresh you can read from the terminal: one line per finished step, then a summary.

``churn-assets materialize`` runs the job in the main thread; a
``RunWatcher`` thread follows the run's events in the instance's event log, prints a
line as each step finishes and copies every event into a log file, so Dagster's
DEBUG stream stays out of the terminal. ``run_summary`` then reads the finished run's
events and says what happened, or why it failed, in a few lines.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import TextIO

import dagster as dg

from churn_assets.core.redaction import redact
from churn_assets.defs.alerts import failure_reason
from churn_assets.defs.outcome import OUTCOME_TAG, refusal_words
from churn_assets.defs.outcome import metadata_values as _metadata
from churn_assets.defs.schedules import churn_refresh
from churn_assets.sources.base import describe_column_changes
from churn_assets.storage.faults import fault_in_text

QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
KEY_METRICS = ("roc_auc", "pr_auc", "brier_score", "log_loss", "ece")
OUTCOME_WORDS = {"deployed": "succeeded: a new version is in production",
                 "no_change": "succeeded: production unchanged",
                 "refused": "refused by the gate: production unchanged", "failed": "FAILED"}
_FINISHED = {"STEP_SUCCESS": "done", "STEP_FAILURE": "FAILED", "STEP_SKIPPED": "skipped",
             "STEP_UP_FOR_RETRY": "retrying"}


def one_line(text: str) -> str:
    """A multi-line reason (a validation error lists a column per line) on one line,
    without the class path Dagster puts before its own errors."""
    text = re.sub(r"^dagster\.[\w.]+: ", "", str(text).strip())
    return re.sub(r"(:?)\s*\n\s*", lambda m: ": " if m.group(1) else "; ", text)


def _step_failure(event) -> str:
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return one_line(user.description)
    reason = one_line(failure_reason(getattr(data, "error", None)))
    # A full, read-only or foreign data directory: what to do, not the OSError's repr.
    return fault_in_text(reason) or reason


def _error_of(event):
    """The ``SerializableErrorInfo`` an event carries (a step's, a resource's, the run's), or None."""
    data = getattr(event, "event_specific_data", None)
    return getattr(data, "error", None) if data is not None else None


def format_entry(entry) -> str:
    """One log-file line, as Dagster's console logger would print it."""
    when = dt.datetime.fromtimestamp(entry.timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
    return f"{when} - {logging.getLevelName(entry.level)} - {kind} - {entry.step_key or '-'} - {entry.message}"


class RunWatcher(threading.Thread):
    """Follows the newest ``churn_refresh`` run created after it started."""

    def __init__(self, instance: dg.DagsterInstance, log_file: TextIO, out: TextIO,
                 poll_seconds: float = 0.25) -> None:
        super().__init__(name="churn-run-watcher", daemon=True)
        self.instance, self.log_file, self.out = instance, log_file, out
        self.poll_seconds = poll_seconds
        self.started_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        self.run_id: str | None = None
        self._cursor: str | None = None
        self._halt = threading.Event()

    def _find_run(self) -> None:
        runs = self.instance.get_runs(filters=dg.RunsFilter(job_name=churn_refresh.name,
                                                            created_after=self.started_at), limit=1)
        if runs:
            self.run_id = runs[0].run_id

    def poll(self) -> None:
        """Print and log the events stored since the last poll."""
        if self.run_id is None:
            self._find_run()
            if self.run_id is None:
                return
        while True:
            connection = self.instance.get_records_for_run(self.run_id, cursor=self._cursor)
            self._cursor = connection.cursor
            for record in connection.records:
                self._handle(record.event_log_entry)
            if not connection.has_more:
                break
        self.log_file.flush()

    def _handle(self, entry) -> None:
        self.log_file.write(format_entry(entry) + "\n")
        event = entry.dagster_event
        error = _error_of(event)
        if error is not None:  # the reason and where it came from, not only "step failed"
            self.log_file.write(redact(error.to_string()).rstrip() + "\n")
        word = _FINISHED.get(event.event_type_value) if event is not None else None
        if word:
            detail = f": {_step_failure(event)}" if event.event_type_value == "STEP_FAILURE" else ""
            duration = getattr(event.event_specific_data, "duration_ms", None)
            if event.event_type_value == "STEP_SUCCESS" and duration is not None:
                detail = f" ({duration / 1000:.1f} s)"
            self.out.write(f"  {word:<8} {event.step_key}{detail}\n")
            self.out.flush()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a busy SQLite file: try again next tick
                try:
                    self.log_file.write(f"(watcher: {type(exc).__name__}: {exc})\n")
                except OSError:
                    pass  # a full disk: the run's own failure says so, not this thread's traceback
            self._halt.wait(self.poll_seconds)

    def finish(self, run_id: str | None) -> None:
        """Stop polling and drain what is left (the run may have ended between polls)."""
        self._halt.set()
        self.join(timeout=10)
        self.run_id = self.run_id or run_id
        if self.run_id:
            self.poll()


def _difference(a, b) -> float:
    try:
        return float(a) - float(b)
    except (TypeError, ValueError):
        return math.nan


def _signed(value) -> str:
    return f"{value:+.4f}" if isinstance(value, (int, float)) else "NaN"


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def run_summary(instance: dg.DagsterInstance, run_id: str) -> tuple[bool, list[str]]:
    """(success, lines): what the run did, or the one-line reason it failed."""
    materialized, observed, failures, check, run_errors = {}, {}, [], None, []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        if event.step_key is None and event.event_type_value != "STEP_FAILURE" and _error_of(event) is not None:
            # A resource that could not start (an unreachable bucket), the run's own failure:
            # no step failed, and without this the summary could not say why.
            run_errors.append(one_line(failure_reason(_error_of(event))))
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = data.materialization
            materialized[mat.asset_key.to_user_string()] = _metadata(mat.metadata)
        elif event.event_type_value == "ASSET_OBSERVATION":
            obs = data.asset_observation
            observed[obs.asset_key.to_user_string()] = _metadata(obs.metadata)
        elif event.event_type_value == "ASSET_CHECK_EVALUATION" and data.check_name == "deployment_gate":
            check = data
        elif event.event_type_value == "STEP_FAILURE":
            failures.append((event.step_key, _step_failure(event)))
    run = instance.get_run_by_id(run_id)
    success = run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    outcome = run.tags.get(OUTCOME_TAG) if run is not None else None
    lines = [f"run {run_id}: {OUTCOME_WORDS.get(outcome, 'succeeded' if success else 'FAILED')}"]
    raw = materialized.get("raw_customers")
    if raw is not None:
        lines.append(f"  records fetched: {raw.get('records')} ({raw.get('source')})")
        if raw.get("new_source_columns") or raw.get("vanished_source_columns"):
            lines.append(f"  {describe_column_changes(raw)}")
    elif "raw_customers" in observed:
        lines.append(f"  records fetched: 0 ({observed['raw_customers'].get('status')})")
    clean = materialized.get("clean_features")
    if clean is not None:
        lines.append(f"  history rows: {clean.get('history_rows')} ({clean.get('inserted_rows')} new,"
                     f" {clean.get('updated_rows')} updated)")
    elif "clean_features" in observed:
        lines.append(f"  {observed['clean_features'].get('status')}")
    model = materialized.get("churn_model")
    if model is not None:
        lines.append(f"  chosen family: {model.get('model_family')} (validation ROC AUC"
                     f" {_fmt(model.get('validation_roc_auc'))})")
    report = materialized.get("evaluation_report")
    if report is not None:
        champion = report.get("champion_version")
        lines.append(f"  challenger vs champion {champion if champion != 'None' else '(none: bootstrap)'}"
                     f" on {report.get('holdout_rows')} holdout rows:")
        metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
        challenger, champion = metrics.get("challenger") or {}, metrics.get("champion") or {}
        comparisons = report.get("comparisons") if isinstance(report.get("comparisons"), dict) else {}
        for name in KEY_METRICS:
            if name not in challenger:
                continue
            text = f"    {name:<12} {_fmt(challenger[name])}"
            if name in champion:
                c = comparisons.get(name) or {}
                delta = c.get("difference", _difference(challenger[name], champion[name]))
                text += f" vs {_fmt(champion[name])}  delta {_signed(delta)}"
                if c.get("ci_low") is not None and c.get("ci_high") is not None:
                    text += f" (95% CI {_signed(c['ci_low'])} to {_signed(c['ci_high'])})"
            lines.append(text)
    if check is not None:
        lines += _gate_lines(check, report or {})
    deployed = materialized.get("deployed_model")
    if deployed is not None:
        lines.append(_production_line(deployed))
    scores = materialized.get("churn_scores")
    if scores is not None:
        repaired = f" (rescored: {scores['repaired']})" if scores.get("repaired") else ""
        lines.append(f"  risk list: {scores.get('customers')} customers scored by"
                     f" {scores.get('production_version')}{repaired}")
    for step, reason in failures:
        if check is not None and not check.passed and step.endswith("_deployment_gate"):
            continue  # the gate line above already says why, rule by rule
        lines.append(f"  failed at {step}: {reason}")
    if not success and not failures and run_errors:
        # The first is the cause (a resource's error); the run's failure only wraps it.
        lines.append(f"  failed at start-up: {fault_in_text(run_errors[0]) or run_errors[0]}")
    return success, lines


def _gate_lines(check, report: dict) -> list[str]:
    if check.passed:
        return [f"  gate: {check.description}"]
    return [f"  gate: {refusal_words(_metadata(check.metadata).get('outcomes'), check.description, report)}"]


def _production_line(deployed: dict) -> str:
    version = deployed.get("production_version")
    if deployed.get("held"):
        return (f"  production: {version} stays; the challenger passed the gate but is {deployed['held']}"
                "\n  (`churn-assets unpin` lets refreshes promote again)")
    if not deployed.get("new_version"):
        return f"  production: {version} (unchanged: {deployed.get('verdict')})"
    previous = deployed.get("previous_version")
    was = "first version" if previous in (None, "None") else f"replaces {previous}"
    return f"  production: {version} (new, {was}); model card {deployed.get('card_path')}"


def failure_line(success: bool, lines: list[str]) -> str | None:
    """The one-line reason of a failed or refused run, for stderr."""
    if success:
        return None
    for line in lines:
        if line.strip().startswith("gate: refused: "):
            return "deployment " + line.strip().removeprefix("gate: ")
    for line in lines:
        if line.strip().startswith("failed at "):
            return line.strip()
    return "the run failed (see the log file)"


def log_path(home: Path) -> Path:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"materialize-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.log"
