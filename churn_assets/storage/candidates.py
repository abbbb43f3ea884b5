"""Challengers that did not reach production, kept beside the registry so its history
reads complete.

``registry/candidates.jsonl`` holds one JSON object per refused challenger (and per
challenger that passed the gate but was *held* because the operator pinned production:
``"held": true``, ``verdict`` "held: production pinned by the operator at …"): its
metrics, the champion's on the same holdout, the paired comparison, the gate verdict,
the run id and when it was recorded. The registry's ``versions/`` only holds models that passed;
without this file a refusal would leave no trace outside Dagster's run history.

Each line is written with one ``write`` on a descriptor opened with ``O_APPEND`` and then
fsynced: the kernel places an O_APPEND write at the end of the file atomically, so two
processes recording at once (the gate check and ``deployed_model`` of another run) never
interleave their lines, and a crash loses at most the line being written. A torn or
hand-edited line is reported by ``read`` and skipped, never fatal: one bad line must not
hide every other refusal.

On object storage (an ``s3://`` registry) there is no O_APPEND: a line is appended with
a conditional PUT of the whole object, redone if another writer changed it in between
(storage/location.py ``append_bytes``), so no line is lost there either.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field

from churn_assets.storage import location

FILE_NAME = "candidates.jsonl"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json_safe(value):
    """NaN and infinities as None: JSON has no NaN, and ``json.dumps`` would write an
    invalid token that other readers (jq, a browser) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class CandidateRead:
    """What ``read`` found: the entries in file order, and one message per bad line."""

    entries: list[dict]
    problems: list[str] = field(default_factory=list)


def candidate_entry(report, verdict, run_id: str, recorded_by: str) -> dict:
    """A challenger's log entry: ``report`` (``core.evaluation.EvaluationReport``) and the
    gate's ``verdict`` (``core.gate.GateVerdict``) as plain values."""
    return {
        "run_id": run_id, "recorded_by": recorded_by, "challenger_fingerprint": report.challenger_fingerprint,
        "model_family": report.model_family, "threshold": report.threshold, "metrics": report.challenger,
        "champion_metrics": report.champion, "champion_version": report.champion_version,
        "comparisons": report.comparisons, "calibration": report.calibration,
        "best_recent": getattr(report, "best_recent", None), "compared_rows": getattr(report, "compared_rows", None),
        "data_window": report.data_window, "holdout_rows": report.holdout_rows,
        "gate": verdict.to_dict(), "verdict": verdict.summary,
    }


class CandidateLog:
    """Append-only log of refused challengers under a registry root."""

    def __init__(self, registry_root: str | os.PathLike) -> None:
        self.path = location.location(registry_root) / FILE_NAME

    def record(self, entry: dict) -> dict:
        """Append ``entry`` (plain JSON-able values) with ``recorded_at``; returns what was written.

        Expected keys: ``run_id``, ``recorded_by`` (the step), ``challenger_fingerprint``,
        ``model_family``, ``metrics``, ``champion_metrics``, ``champion_version``,
        ``comparisons``, ``gate`` (``GateVerdict.to_dict()``), ``verdict`` (its summary).
        """
        body = _json_safe({"recorded_at": _now(), **entry})
        line = (json.dumps(body, sort_keys=True) + "\n").encode()
        if location.is_remote(self.path):
            location.append_bytes(self.path, line)
            return body
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a full disk; the next reader reports the torn line
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        return body

    def read(self) -> CandidateRead:
        """Every well-formed entry, oldest first, with a message for each line that is not.

        The same refusal recorded twice in one run (by the gate check and by
        ``deployed_model``) is kept once: run id and challenger fingerprint identify it.
        """
        if location.is_remote(self.path):
            raw_lines = (location.read_bytes(self.path) or b"").split(b"\n")
        elif not self.path.exists():
            return CandidateRead([])
        else:
            with open(self.path, "rb") as fh:
                raw_lines = fh.read().split(b"\n")
        entries, problems, seen = [], [], set()
        for number, raw in enumerate(raw_lines, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                entry = json.loads(text)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{self.path}:{number}: unreadable line skipped ({exc})")
                continue
            if not isinstance(entry, dict):
                problems.append(f"{self.path}:{number}: not a JSON object; skipped")
                continue
            key = (entry.get("run_id"), entry.get("challenger_fingerprint"))
            if key != (None, None) and key in seen:
                continue
            seen.add(key)
            entries.append(entry)
        return CandidateRead(entries, problems)
