"""Dagster resources: storage, the training plan and the deployment gate's rules."""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import pandas as pd
from pyarrow import ArrowException
from pydantic import Field

from churn_assets.gate import DEFAULT_RULES, GateRule
from churn_assets.history import CustomerHistory, atomic_write_bytes
from churn_assets.registry import ModelRegistry
from churn_assets.spec import FeatureSpec, load_spec
from churn_assets.training import WindowPlan


class ChurnStorage(dg.ConfigurableResource):
    """The data directory: customer history, landed raw batches and the model registry."""

    home: str

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser()

    def history(self) -> CustomerHistory:
        return CustomerHistory(self.root / "history")

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.root / "registry")

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
        for old in sorted(landing.glob("batch-*"))[:-keep]:
            old.unlink(missing_ok=True)
        return path


class TrainingPlan(dg.ConfigurableResource):
    """Which feature spec to use and how history is cut into weeks for training."""

    spec: str = "simulator"
    training_window_weeks: int = 12
    validation_weeks: int = 2
    holdout_weeks: int = 2

    def feature_spec(self) -> FeatureSpec:
        return load_spec(self.spec)

    def window_plan(self) -> WindowPlan:
        return WindowPlan(self.training_window_weeks, self.validation_weeks, self.holdout_weeks)


class GateRuleConfig(dg.Config):
    metric: str
    floor: float | None = None
    max_regression: float | None = None


def _default_rules() -> list[GateRuleConfig]:
    return [GateRuleConfig(metric=r.metric, floor=r.floor, max_regression=r.max_regression)
            for r in DEFAULT_RULES]


class DeploymentGateRules(dg.ConfigurableResource):
    """Per-metric floors and allowed regressions; shared by the check and the deploy step."""

    rules: list[GateRuleConfig] = Field(default_factory=_default_rules)

    def gate_rules(self) -> tuple[GateRule, ...]:
        return tuple(GateRule(r.metric, r.floor, r.max_regression) for r in self.rules)

    @classmethod
    def from_rules(cls, rules) -> DeploymentGateRules:
        return cls(rules=[GateRuleConfig(metric=r.metric, floor=r.floor,
                                         max_regression=r.max_regression) for r in rules])
