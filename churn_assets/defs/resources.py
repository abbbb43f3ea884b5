"""Dagster resources: storage, the training plan and the deployment gate's rules."""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pandas as pd
from pyarrow import ArrowException
from pydantic import Field

from churn_assets.core.gate import DEFAULT_RULES, RECENT_VERSIONS, GateRule
from churn_assets.core.spec import FeatureSpec, SpecError, load_spec
from churn_assets.core.training import WindowPlan
from churn_assets.storage import location
from churn_assets.storage.atomic import atomic_write_bytes, private_mkdir
from churn_assets.storage.history import CustomerHistory
from churn_assets.storage.object_registry import open_registry
from churn_assets.storage.registry import ModelRegistry
from churn_assets.defs.threads import thread_budget


class ChurnStorage(dg.ConfigurableResource):
    """The data directory: customer history, landed raw batches and the model registry.

    ``home`` is a local folder or an ``s3://bucket/prefix`` URL (storage/location.py).
    """

    home: str

    @property
    def root(self) -> Path:
        """``Path`` for a local home, ``UPath`` for an s3:// one (same ``/`` and methods)."""
        return location.location(self.home)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        root = self.root
        if location.is_remote(root):
            # Fail the first step with one line naming the URL, before anything is written
            # (a missing bucket would otherwise surface as a stack trace mid-upsert).
            location.check_reachable(root)
            return
        # Customer data and pickled models live here: the directory is the owner's alone
        # (0700, like ~/.ssh), whatever the umask, so modes of files below it cannot leak.
        private_mkdir(root, tighten=True)

    def history(self) -> CustomerHistory:
        return CustomerHistory(self.root / "history")

    def registry(self) -> ModelRegistry:
        return open_registry(self.root / "registry")

    def land(self, records: pd.DataFrame, run_id: str, keep: int = 20) -> Path:
        """Keep the raw batch as received (for forensics), pruning all but the newest ``keep``."""
        landing = self.root / "landing"
        stem = landing / f"batch-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S%f}-{run_id[:8]}"
        buf = io.BytesIO()
        try:
            records.to_parquet(buf, index=False)
            path = stem.with_suffix(".parquet")
        except (ValueError, TypeError, ArrowException):
            # A malformed batch (mixed types in a column) still gets kept, as text.
            buf = io.BytesIO(records.to_csv(index=False).encode())
            path = stem.with_suffix(".csv")
        atomic_write_bytes(path, buf.getvalue())
        batches = [p for p in landing.iterdir() if p.name.startswith("batch-")]
        for old in sorted(batches, key=lambda p: p.name)[:-keep]:
            old.unlink(missing_ok=True)
        return path


class TrainingPlan(dg.ConfigurableResource):
    """Which feature spec to use and how history is cut into weeks for training."""

    spec: str = "simulator"
    training_window_weeks: int = 12
    validation_weeks: int = 2
    holdout_weeks: int = 2

    def feature_spec(self) -> FeatureSpec:
        try:
            return load_spec(self.spec)
        except SpecError as exc:
            # A configuration error: retrying the step cannot fix it.
            raise dg.Failure(description=f"feature spec: {exc}", allow_retries=False) from None

    def window_plan(self) -> WindowPlan:
        return WindowPlan(self.training_window_weeks, self.validation_weeks, self.holdout_weeks)

    @contextmanager
    def yield_for_execution(self, context):
        # Every training and evaluation step uses this resource, so the run's thread budget
        # is entered here, in the thread that runs the steps (defs/threads.py).
        with thread_budget():
            yield self


class GateRuleConfig(dg.Config):
    metric: str
    floor: float | None = None
    max_regression: float | None = None
    mode: str | None = None
    confidence: float = 0.95
    against: str = "champion"

    @classmethod
    def of(cls, rule: GateRule) -> GateRuleConfig:
        return cls(metric=rule.metric, floor=rule.floor, max_regression=rule.max_regression,
                   mode=rule.mode, confidence=rule.confidence, against=rule.against)


def _default_rules() -> list[GateRuleConfig]:
    return [GateRuleConfig.of(r) for r in DEFAULT_RULES]


class DeploymentGateRules(dg.ConfigurableResource):
    """Per-metric floors and allowed regressions; shared by the check and the deploy step."""

    rules: list[GateRuleConfig] = Field(default_factory=_default_rules)

    recent_versions: int = RECENT_VERSIONS

    def gate_rules(self) -> tuple[GateRule, ...]:
        return tuple(GateRule(r.metric, r.floor, r.max_regression, r.mode, r.confidence, r.against)
                     for r in self.rules)

    @classmethod
    def from_rules(cls, rules) -> DeploymentGateRules:
        return cls(rules=[GateRuleConfig.of(r) for r in rules])
