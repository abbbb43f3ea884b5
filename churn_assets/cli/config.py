"""``check-config`` and ``info``: the active configuration, checked and shown."""

from __future__ import annotations

import argparse
import json
import os
import re

from churn_assets.settings import load_settings


def cmd_check_config(ns: argparse.Namespace) -> int:
    settings = load_settings()  # raises SettingsError, reported by main()
    spec = settings.feature_spec()
    where = os.environ.get("CHURN_ASSETS_CONFIG") or "defaults (CHURN_ASSETS_CONFIG is not set)"
    print(f"configuration OK: {where}")
    print(f"  feature spec {spec.name!r}: {len(spec.numeric_features)} numeric,"
          f" {len(spec.categorical_features)} categorical features, label horizon"
          f" {spec.label_horizon_days} days")
    print(f"  source: {settings.source.kind}; window {settings.window.training_window_weeks}+"
          f"{settings.window.holdout_weeks} weeks; {len(settings.gate.rules)} gate rules;"
          f" schedule {settings.schedule.cron} ({settings.schedule.timezone})")
    print(f"  data directory: {settings.home}")
    return 0


def redact_url(value: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``; other text unchanged."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", value)


def info_lines(settings) -> list[str]:
    """The active configuration for a person: where state lives, the data, the window,
    each gate rule in words, the schedule and sensors (secrets redacted)."""
    from churn_assets.health.gate_words import rule_text

    spec, window = settings.feature_spec(), settings.window
    source = ", ".join(f"{key}={redact_url(value) if isinstance(value, str) else value}"
                       for key, value in settings.source.model_dump(mode="json", exclude={"kind"}).items()
                       if value not in (None, "", [], {}))
    sensor = settings.sensor
    sensor_on = sensor.enabled if sensor.enabled is not None else settings.source.kind in ("http", "sql")
    health = settings.monitoring
    lines = [
        f"data directory: {settings.home}",
        f"Dagster instance: {settings.dagster_home}",
        f"feature spec: {spec.name} ({len(spec.feature_columns)} features, label horizon"
        f" {spec.label_horizon_days} days)",
        f"source: {settings.source.kind}" + (f" ({source})" if source else ""),
        f"window: {window.training_window_weeks} training weeks (the newest {window.validation_weeks} for"
        f" validation), then {window.holdout_weeks} holdout weeks",
        "gate rules (a challenger must pass every one to replace production):",
        *[f"  {rule_text(rule)}" for rule in settings.gate_rules],
        f"schedule: weekly_refresh, cron {settings.schedule.cron} ({settings.schedule.timezone})",
        f"new-data sensor: {'on' if sensor_on else 'off'} (at least {sensor.min_new_records} new records,"
        f" checked every {sensor.interval_seconds} s)",
        f"health sensor: {'on' if health.sensor_enabled else 'off'} (refresh on drift PSI >= {health.psi_act}"
        f" or ROC AUC decay > {health.max_auc_decay})",
        "risk list: " + (f"Parquet and the SQL table {settings.scores.sql_table} (URL in"
                         f" ${settings.scores.sql_url_env})" if settings.scores.sql_url_env else "Parquet"),
    ]
    return lines


def cmd_info(ns: argparse.Namespace) -> int:
    settings = load_settings()
    if ns.json:
        source = {key: redact_url(value) if isinstance(value, str) else value
                  for key, value in settings.source.model_dump(mode="json").items()}
        print(json.dumps({"home": str(settings.home), "dagster_home": str(settings.dagster_home),
                          "spec": settings.spec, "source": source,
                          "window": settings.window.model_dump(mode="json"),
                          "gate_rules": [r.model_dump(mode="json") for r in settings.gate.rules],
                          "schedule": f"{settings.schedule.cron} ({settings.schedule.timezone})"},
                         indent=2))
        return 0
    print("\n".join(info_lines(settings)))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("check-config", help="validate the configuration and feature spec; run nothing",
                       description="Load the settings ($CHURN_ASSETS_CONFIG) and the feature spec, check"
                                   " every key, and say what is wrong in one line per problem; runs nothing.")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("info", help="print where state lives and the active configuration",
                       description="Print the data directory, the source, the window, each gate rule in"
                                   " words, the schedule and the sensors of the active configuration.")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=cmd_info)
