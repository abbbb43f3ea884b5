"""Which labelled history a deploy decision has already covered (issue 8).

Whether a run retrains is decided by comparing the history as it is now with what the
last gate decision (deployed or refused) was evaluated on, not by whether the source
sent new records: the watermark moves when ``clean_features`` stores a batch, long
before training and deployment succeed, so a run killed in between would otherwise
leave that week's data stored but never evaluated, and the next run would skip.

Files under ``$CHURN_ASSETS_HOME/decisions/`` (outside ``history/`` and ``registry/``,
which their own modules own):

    runs/<run_id>.json    coverage a run's clean_features handed to training (written
                          before training starts)
    last_decision.json    the newest gate outcome, "deployed" or "refused", with the
                          coverage it was decided on

A coverage is a signature of the labelled rows a challenger would be trained and
evaluated on (train, validation and holdout frames, order-independent), the code version
and the feature spec, plus readable fields: the newest final-label snapshot and the
window. Equal signatures mean an equal challenger and an equal verdict, so there is
nothing to retrain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from churn_assets.core.code_version import code_version
from churn_assets.core.spec import FeatureSpec
from churn_assets.core.training import ModelingFrames
from churn_assets.storage.atomic import atomic_write_json
from churn_assets.storage.location import location
from churn_assets.storage.object_registry import open_registry
from churn_assets.storage.registry import RegistryError

KEEP_RUN_RECORDS = 50


def _frame_digest(frame: pd.DataFrame) -> str:
    """Order-independent digest of a frame's rows (sum of row hashes, mod 2**64): a
    history store that returns rows in another order must not trigger a retrain."""
    columns = sorted(frame.columns)
    hashes = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy(dtype=np.uint64)
    total = int(hashes.sum(dtype=np.uint64)) if len(hashes) else 0
    return f"{len(frame)}:{total:016x}:{','.join(columns)}"


def coverage_of(frames: ModelingFrames, spec: FeatureSpec) -> dict:
    """What a challenger trained on ``frames`` would cover (see the module docstring)."""
    digest = hashlib.sha256()
    for frame in (frames.train, frames.validation, frames.holdout):
        digest.update(_frame_digest(frame).encode())
    digest.update(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode())
    digest.update(code_version().encode())
    window = frames.window(spec)
    return {"signature": digest.hexdigest(), "code_version": code_version(),
            "newest_final_snapshot": (window.get("holdout") or [None, None])[1],
            "label_cutoff": window["label_cutoff"], "as_of": window["as_of"],
            "data_window": window}


def rules_key(rules) -> list[list]:
    """Gate rules (``GateRule``) as plain JSON, every field that decides a refusal, to tell
    whether a refusal was made under today's rules."""
    return [[r.metric, r.floor, r.max_regression, r.mode, r.confidence, r.against] for r in rules]


class DecisionLog:
    """``decisions/`` in a data directory; every write is atomic (temp file + rename)."""

    def __init__(self, home: str | Path) -> None:
        self.dir = location(home) / "decisions"  # a Path, or a UPath for an s3:// home
        self.runs_dir = self.dir / "runs"
        self.last_path = self.dir / "last_decision.json"

    def record_evaluation(self, run_id: str, coverage: dict) -> None:
        atomic_write_json(self.runs_dir / f"{run_id}.json", dict(coverage, run_id=run_id))
        self._prune()

    def coverage_for(self, run_ids) -> dict | None:
        """The coverage recorded by the first of ``run_ids`` that has one (a re-executed
        run reuses its parent's ``clean_features``)."""
        for run_id in run_ids:
            path = self.runs_dir / f"{run_id}.json" if run_id else None
            if path is not None and path.exists():
                return _read_json(path)
        return None

    def last(self) -> dict | None:
        return _read_json(self.last_path) if self.last_path.exists() else None

    def record_outcome(self, run_ids, outcome: str, **details) -> dict | None:
        """Store "deployed" / "refused" for the coverage this run evaluated. None when the
        run did not evaluate a coverage itself (e.g. ``--select deployed_model`` alone)."""
        coverage = self.coverage_for(run_ids)
        if coverage is None:
            return None
        decision = dict(coverage, outcome=outcome,
                        decided_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        **details)
        atomic_write_json(self.last_path, decision)
        return decision

    def _prune(self) -> None:
        records = sorted(self.runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in records[:-KEEP_RUN_RECORDS]:
            old.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: treated as "not decided", so the run retrains


def already_decided(home: str | Path, coverage: dict, spec: FeatureSpec, rules) -> str | None:
    """Why no retrain is needed for ``coverage``, or None when one is.

    Covered when (1) the last decision was made on this coverage (a refusal only under
    the same gate rules against the same champion), or (2) production came from a run
    that evaluated this coverage
    (the run was killed after promoting, before recording), or (3) with no decision log
    at all (data directories from before this log), production's manifest names the same
    window, code and spec.
    """
    log = DecisionLog(home)
    last = log.last()
    try:
        production = open_registry(location(home) / "registry").production()
    except (RegistryError, OSError, ValueError, KeyError):
        return None  # an unreadable registry: retrain, and let the evaluation name the problem
    if last and last.get("signature") == coverage["signature"]:
        if last.get("outcome") == "deployed":
            return (f"production {last.get('version')} was deployed from exactly this labelled"
                    f" history (newest final label {coverage['newest_final_snapshot']})")
        # A refusal holds only for what decided it: the data (the signature covers data,
        # code and spec), every field of every rule, and the champion it lost to.
        same_champion = last.get("champion_version") == (production.version if production else None)
        if last.get("outcome") == "refused" and last.get("gate_rules") == rules_key(rules) and same_champion:
            return (f"a challenger trained on exactly this labelled history (newest final label"
                    f" {coverage['newest_final_snapshot']}) was refused by the gate in run"
                    f" {str(last.get('run_id'))[:8]}; it would be refused again")
    if production is None:
        return None
    manifest = production.manifest
    evaluated = log.coverage_for([manifest.get("run_id")])
    if evaluated is not None:
        if evaluated.get("signature") == coverage["signature"]:
            return (f"production {production.version} was trained on exactly this labelled history"
                    f" (newest final label {coverage['newest_final_snapshot']})")
        return None
    if last is None and not log.runs_dir.exists():
        same = (manifest.get("code_version") == coverage["code_version"]
                and manifest.get("feature_spec") == spec.to_dict()
                and all(manifest.get("data_window", {}).get(k) == coverage["data_window"].get(k)
                        for k in ("train", "validation", "holdout")))
        if same:
            return (f"production {production.version} was trained by this code on the same"
                    f" window (newest final label {coverage['newest_final_snapshot']})")
    return None


def record_run_outcome(home: str | Path, run, outcome: str, **details) -> dict | None:
    """``DecisionLog.record_outcome`` for a Dagster run or run id (a re-executed run falls
    back to its parent's or root's coverage). Called on every refusal (``checks.
    record_refusal``) and by ``deployed_model`` once production holds the challenger."""
    if isinstance(run, str):
        run_ids = [run]
    else:
        run_ids = [run.run_id, getattr(run, "parent_run_id", None), getattr(run, "root_run_id", None)]
    return DecisionLog(home).record_outcome(run_ids, outcome, run_id=run_ids[0], **details)
