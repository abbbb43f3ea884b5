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


def cmd_info(ns: argparse.Namespace) -> int:
    settings = load_settings()
    source = {key: redact_url(value) if isinstance(value, str) else value
              for key, value in settings.source.model_dump(mode="json").items()}
    print(json.dumps({"home": str(settings.home), "dagster_home": str(settings.dagster_home),
                      "spec": settings.spec, "source": source,
                      "schedule": f"{settings.schedule.cron} ({settings.schedule.timezone})"},
                     indent=2))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("check-config", help="validate the configuration and feature spec; run nothing")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("info", help="print where state lives and the active configuration")
    p.set_defaults(func=cmd_info)
