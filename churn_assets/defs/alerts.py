"""Alerts: a Slack incoming-webhook message for every failed refresh, and for every
challenger the deployment gate refused (worded as a refusal, not a failure).

The webhook URL comes from ``CHURN_ASSETS_ALERT_WEBHOOK`` (unset: log only). Posting is
best effort: the run's failure is already recorded by Dagster, and a dead webhook only
adds a log line; it never replaces or hides the failure it was reporting.

Every alert text is passed through ``core.redaction.redact`` before it is logged or
posted: an error message may quote a URL, and a password or ``token=`` in it must not
end up in a Slack channel.
"""

from __future__ import annotations

import logging
import os

import requests

from churn_assets.core.redaction import redact

WEBHOOK_ENV = "CHURN_ASSETS_ALERT_WEBHOOK"
log = logging.getLogger("churn_assets.defs.alerts")


def failure_reason(error) -> str:
    """The message of a ``SerializableErrorInfo`` and of its causes.

    After the RetryPolicy gives up, the step's own message is only "Exceeded max_retries";
    the reason worth alerting on is in the cause.
    """
    parts, seen = [], 0
    while error is not None and seen < 5:
        message = (error.message or "").strip()
        if message and message not in parts:
            parts.append(message)
        error, seen = error.cause, seen + 1
    return " <- ".join(parts) or "unknown reason"


def slack_message(run_id: str, job: str, step: str | None, reason: str, ui_url: str = "",
                  outcome: str = "failed") -> dict:
    """Slack incoming-webhook JSON (``text`` for notifications, ``blocks`` for layout),
    with credentials masked in every field. ``outcome`` "refused": the deployment gate
    kept production, which is a decision to read, not a crash to fix."""
    reason, step, job = redact(reason), redact(step) if step else step, redact(job)
    refused = outcome == "refused"
    where = f"step `{step}`" if step else "the run"
    text = (f"churn refresh refused the new model: run {run_id} ({job}): {reason.removeprefix('refused: ')}"
            if refused else f"churn refresh failed: run {run_id} ({job}), {where}: {reason}")
    fields = [{"type": "mrkdwn", "text": f"*Run*\n`{run_id}`"},
              {"type": "mrkdwn", "text": f"*{'Deciding' if refused else 'Failing'} step*\n`{step or '-'}`"}]
    title = "Churn model refused by the deployment gate" if refused else "Churn refresh failed"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": title}},
        {"type": "section", "fields": fields},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n```{reason[:2500]}```"}},
    ]
    if ui_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": redact(ui_url)}]})
    return {"text": text[:3000], "blocks": blocks}


def post_alert(payload: dict, url: str | None = None, timeout: float = 5.0) -> bool:
    """POST ``payload`` to the webhook; True if it was accepted. Never raises."""
    url = url if url is not None else os.environ.get(WEBHOOK_ENV, "")
    # Payloads built elsewhere get the same masking: this is the last point before Slack.
    payload = {**payload, "text": redact(payload.get("text", ""))}
    if "blocks" in payload:
        payload["blocks"] = _redacted(payload["blocks"])
    log.error(payload["text"])  # the log line exists whether or not the webhook works
    if not url:
        return False
    try:
        response = requests.post(url, json=payload, timeout=timeout)
        response.raise_for_status()
        return True
    except requests.RequestException as exc:
        # The URL itself may be a secret (Slack webhooks are): name only the env var.
        log.error("alert webhook (%s) failed: %s; the failure above stands", WEBHOOK_ENV,
                  type(exc).__name__)
        return False


def _redacted(value):
    """``value`` (JSON-like) with ``redact`` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value
