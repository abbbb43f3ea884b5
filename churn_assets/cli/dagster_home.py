"""The persistent Dagster instance under the data directory, and running Dagster in it."""

from __future__ import annotations

from pathlib import Path


# Sections of the instance config that keep a killed run from holding the refresh slot
# forever (issue 8). prepare_dagster_home adds any that an existing dagster.yaml lacks.
# The launcher is Dagster's default plus a worker health check (defs/liveness.py): run
# monitoring marks a run FAILED within one poll interval once its process is gone, and
# that RUN_FAILURE is what the failure alert reports. No resume: a refresh restarts
# cleanly from its watermark on the next tick, a half-resumed one would not.
DAGSTER_RELIABILITY_SECTIONS = {
    "run_launcher": """\
run_launcher:
  module: churn_assets.defs.liveness
  class: ChurnRunLauncher
""",
    "run_monitoring": """\
run_monitoring:
  enabled: true
  poll_interval_seconds: 15
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
""",
}
DAGSTER_YAML = """\
# Written by churn-assets. One refresh at a time: the schedule and sensors queue behind it.
run_queue:
  max_concurrent_runs: 1
  tag_concurrency_limits:
    - key: "churn_assets/refresh"
      limit: 1
telemetry:
  enabled: false
""" + "".join(DAGSTER_RELIABILITY_SECTIONS.values())


def postgres_storage(url_env: str) -> str:
    """dagster.yaml ``storage`` in PostgreSQL, its URL read from ``url_env`` when the
    instance loads (the URL may carry a password; it never enters the file)."""
    return f"storage:\n  postgres:\n    postgres_url:\n      env: {url_env}\n"


def prepare_dagster_home(home: Path, postgres_url_env: str = "") -> Path:
    """A persistent Dagster instance under the churn-assets data directory.

    A dagster.yaml written by an earlier version (or edited by hand) keeps every line;
    only the missing top-level sections of ``DAGSTER_RELIABILITY_SECTIONS`` are appended,
    so an instance never stays without run monitoring. A section the user set (their own
    run_launcher, monitoring switched off) is left as it is. ``postgres_url_env``
    (``[dagster] postgres_url_env``) puts runs, events and schedules in PostgreSQL: the
    URL must name the driver, ``postgresql+psycopg2://`` (SQLAlchemy 2.1 maps a bare
    ``postgresql://`` to psycopg 3, which dagster-postgres does not use).
    """
    import yaml

    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    sections = dict(DAGSTER_RELIABILITY_SECTIONS)
    if postgres_url_env:
        sections["storage"] = postgres_storage(postgres_url_env)
    if not config.exists():
        config.write_text(DAGSTER_YAML + (sections.get("storage", "")))
        return dagster_home
    text = config.read_text()
    try:
        present = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return dagster_home  # not ours to repair; Dagster names the error when it loads it
    missing = [block for key, block in sections.items()
               if not isinstance(present, dict) or key not in present]
    if missing:
        added = "# Added by churn-assets (run monitoring, [dagster] settings).\n" + "".join(missing)
        config.write_text(text + ("" if text.endswith("\n") or not text else "\n") + added)
    return dagster_home
