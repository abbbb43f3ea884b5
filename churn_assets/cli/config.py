"""``check-config`` and ``info``: the active configuration, checked and shown."""

from __future__ import annotations

import argparse
import json
import os
import re

from churn_assets.core.redaction import redact
from churn_assets.settings import CONFIG_ENV, Settings, SettingsError, load_settings

SAMPLE_ROWS = 5


def config_name() -> str:
    """How problems name the configuration: its file, or the defaults."""
    return os.environ.get(CONFIG_ENV) or "default settings"


def require_variables(settings: Settings) -> None:
    """Raise ``SettingsError`` naming every environment variable the settings name that
    is unset: a run would fail on it, some only after the model was deployed."""
    unset = settings.unset_variables()
    if unset:
        raise SettingsError("\n".join(f"{config_name()}: {line}" for line in unset))


def source_problems(settings: Settings, unset: list[str]) -> tuple[list[str], list[str]]:
    """(problems, notes) from a few records of the source compared with the feature spec:
    spec columns the source lacks are problems (every run would fail validation on them);
    source columns the spec does not use are notes."""
    from churn_assets.defs.sourcing import source_from_settings
    from churn_assets.sources.base import SourceError, expected_columns, missing_spec_columns

    if any(line.startswith("source.") for line in unset):
        return [], ["source not sampled: a variable it needs is unset"]
    spec = settings.feature_spec()
    source = source_from_settings(settings.source)
    try:
        sample = source.sample(spec, SAMPLE_ROWS)
    except (SourceError, OSError, ValueError) as exc:
        return [f"source: cannot read a sample to compare with the feature spec: {redact(str(exc))}"], []
    if sample is None:
        return [], []
    if sample.empty and not len(sample.columns):
        return [], [f"source: {source.describe()} returned no records; columns not compared"]
    missing = missing_spec_columns(spec, sample.columns)
    problems = [f"spec: feature spec {spec.name!r} needs columns the source does not have:"
                f" {', '.join(map(repr, missing))} (source columns: {', '.join(map(str, sample.columns))})"
                ] if missing else []
    ignored = [str(c) for c in sample.columns if c not in expected_columns(spec, source)]
    notes = [f"source columns the spec does not use: {', '.join(ignored)}"] if ignored else []
    return problems, notes


def cmd_check_config(ns: argparse.Namespace) -> int:
    settings = load_settings()  # raises SettingsError, reported by main()
    spec = settings.feature_spec()
    unset = settings.unset_variables()
    problems, notes = source_problems(settings, unset)
    if unset or problems:
        raise SettingsError("\n".join(f"{config_name()}: {line}" for line in unset + problems))
    where = os.environ.get(CONFIG_ENV) or "defaults (CHURN_ASSETS_CONFIG is not set)"
    print(f"configuration OK: {where}")
    print(f"  feature spec {spec.name!r}: {len(spec.numeric_features)} numeric,"
          f" {len(spec.categorical_features)} categorical features, label horizon"
          f" {spec.label_horizon_days} days")
    print(f"  source: {settings.source.kind}; window {settings.window.training_window_weeks}+"
          f"{settings.window.holdout_weeks} weeks; {len(settings.gate.rules)} gate rules;"
          f" schedule {settings.schedule.cron} ({settings.schedule.timezone})")
    print(f"  data directory: {settings.home}")
    for note in notes:
        print(f"  {note}")
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
        f"window: the evaluated fit learns {window.training_window_weeks - window.validation_weeks} weeks ending"
        f" {spec.label_horizon_days} days before {window.validation_weeks} validation weeks, then"
        f" {window.holdout_weeks} holdout weeks; the deployed fit learns the newest"
        f" {window.training_window_weeks - window.validation_weeks} weeks with final labels",
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
