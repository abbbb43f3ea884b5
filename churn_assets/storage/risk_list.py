"""Which model scored the churn-risk list: ``$CHURN_ASSETS_HOME/scores/state.json``.

Written after the list itself (the Parquet file, then the SQL table when one is
configured) is complete, so it never names a version the list does not hold: a writer
killed halfway, or an upsert that failed, leaves the previous state, and the list is
then seen as not scored by production (``stale_reason``) and rescored by the next run.
Read by ``churn_scores`` and by ``churn-assets versions`` (no Dagster needed).
"""

from __future__ import annotations

import json

from churn_assets.storage import location
from churn_assets.storage.atomic import atomic_write_json

STATE_FILE = "state.json"
LIST_FILE = "churn_scores.parquet"


def scores_dir(home):
    return location.location(home) / "scores"


def read_state(home) -> dict | None:
    """The recorded state, or None (no list yet, a list written before this record, or an
    unreadable file: all mean "rescore")."""
    path = scores_dir(home) / STATE_FILE
    try:
        raw = location.read_bytes(path) if location.is_remote(path) else (
            path.read_bytes() if path.exists() else None)
        state = json.loads(raw) if raw else None
    except (OSError, ValueError, location.StorageLocationError):
        return None
    return state if isinstance(state, dict) else None


def write_state(home, state: dict) -> None:
    atomic_write_json(scores_dir(home) / STATE_FILE, state)


def list_exists(home) -> bool:
    """Whether any risk list (or the record of one) has been written yet."""
    folder = scores_dir(home)
    return (folder / LIST_FILE).exists() or (folder / STATE_FILE).exists()


def stale_reason(home, production_version: str, production_sha256: str, sql_table: str | None) -> str | None:
    """Why the list is not production's, or None if it is. ``sql_table``: the table the
    list must also be in (``[scores] sql_table`` when ``sql_url_env`` is set), else None."""
    state = read_state(home)
    if state is None:
        return "no record of which model scored the list"
    if (state.get("version"), state.get("sha256")) != (production_version, production_sha256):
        return f"the list was scored by {state.get('version')}, production is {production_version}"
    path = scores_dir(home) / LIST_FILE
    if not path.exists():
        return f"{path} is missing"
    sql = state.get("sql") or {}
    if sql_table and (sql.get("table"), sql.get("version")) != (sql_table, production_version):
        return (f"the SQL table {sql_table} was not written with {production_version}"
                " (its last upsert failed or never ran)")
    return None
