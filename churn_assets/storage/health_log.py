"""An append-only time series of model health: one JSON object per line.

Record kinds (every record also has ``kind``, ``recorded_at`` and usually ``run_id``):

- ``estimate``: CBPE estimate of a model ``version`` on snapshot ``week`` before its
  labels matured (``roc_auc``, ``roc_auc_low``/``_high``, ``expected_churn_rate``, ...).
- ``realized``: what ``version`` achieved on ``week`` once its labels were final, with
  ``deploy_roc_auc`` (the holdout AUC it was promoted on) beside it.
- ``drift``: one drift check (``as_of``, ``version``, ``status``, ``max_psi``, ``psi``).
- ``alarm``: a degradation (``reason`` "drift" or "decay") of ``version``; the sensor
  requests one refresh per alarm key.

Why JSONL and not a table: appends never rewrite history, so a crash can at worst
leave one torn last line (skipped on read), never lose earlier weeks. Each append is
flushed and fsynced under an exclusive lock, so two writers never interleave lines.
On object storage (``s3://`` home) an append is a conditional PUT of the whole object,
redone if another writer changed it in between (storage/location.py ``append_bytes``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os

from churn_assets.storage import location

KINDS = ("estimate", "realized", "drift", "alarm")


def _clean(value):
    # NaN/inf are not JSON; None reads back unambiguously as "undefined".
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class HealthLog:
    """The health time series of one data directory (``$CHURN_ASSETS_HOME/health``)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = location.location(directory)
        self.path = self.directory / "health.jsonl"

    def append(self, *records: dict) -> None:
        """Append ``records`` durably (one line each); unknown kinds are refused."""
        if not records:
            return
        lines = []
        for record in records:
            if record.get("kind") not in KINDS:
                raise ValueError(f"health record kind must be one of {KINDS}, got {record.get('kind')!r}")
            body = _clean({"recorded_at": _now(), **record})
            lines.append(json.dumps(body, sort_keys=True, default=str, allow_nan=False))
        if location.is_remote(self.path):
            location.append_bytes(self.path, ("\n".join(lines) + "\n").encode())
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                # A torn last line from a crash must not swallow the first new record.
                fh.seek(0, os.SEEK_END)
                prefix = b""
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    prefix = b"" if fh.read(1) == b"\n" else b"\n"
                fh.write(prefix + ("\n".join(lines) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def records(self, kind: str | None = None) -> list[dict]:
        """Every readable record (oldest first), optionally of one ``kind``."""
        if location.is_remote(self.path):
            lines = (location.read_bytes(self.path) or b"").split(b"\n")
        elif not self.path.exists():
            return []
        else:
            with open(self.path, "rb") as fh:
                lines = fh.read().split(b"\n")
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line from a crash mid-append
            if isinstance(record, dict) and (kind is None or record.get("kind") == kind):
                found.append(record)
        return found

    def keyed(self, kind: str) -> dict[tuple[str, str], dict]:
        """The newest record of ``kind`` per (version, week)."""
        return {(r.get("version"), r.get("week")): r for r in self.records(kind)}

    def weeks(self) -> list[dict]:
        """Estimate and realized side by side, one row per (version, week), by week.

        Row keys: ``version``, ``week``, ``estimated_roc_auc``, ``estimated_low``,
        ``estimated_high``, ``expected_churn_rate``, ``realized_roc_auc``,
        ``realized_churn_rate``, ``deploy_roc_auc``, ``ece`` (None when not known yet).
        """
        estimates, realized = self.keyed("estimate"), self.keyed("realized")
        rows = []
        for key in sorted(set(estimates) | set(realized), key=lambda k: (str(k[1]), str(k[0]))):
            est, real = estimates.get(key, {}), realized.get(key, {})
            rows.append({
                "version": key[0], "week": key[1],
                "estimated_roc_auc": est.get("roc_auc"), "estimated_low": est.get("roc_auc_low"),
                "estimated_high": est.get("roc_auc_high"),
                "expected_churn_rate": est.get("expected_churn_rate"),
                "realized_roc_auc": real.get("roc_auc"), "realized_churn_rate": real.get("churn_rate"),
                "deploy_roc_auc": real.get("deploy_roc_auc", est.get("deploy_roc_auc")),
                "ece": real.get("ece"),
            })
        return rows

    def served_weeks(self) -> list[dict]:
        """``weeks()`` reduced to one row per week: the version that first estimated it.

        That is the model that was in production when the week's snapshots arrived, so
        this is the production track a trend chart should draw; later versions that
        re-estimated the same week are left out.
        """
        first: dict[str, str] = {}
        for record in self.records("estimate"):
            first.setdefault(record.get("week"), record.get("version"))
        out = []
        for row in self.weeks():
            # A week nobody estimated (it matured right after a deploy): its first version.
            owner = first.setdefault(row["week"], row["version"])
            if row["version"] == owner:
                out.append(row)
        return out

    def alarms(self) -> list[dict]:
        return self.records("alarm")
