"""The deployment gate: per-metric rules a challenger must pass to replace the champion."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES


@dataclass(frozen=True)
class GateRule:
    """One metric's rule.

    ``floor``: the absolute bound, a minimum for scores (ROC AUC) and a maximum for
    losses (Brier score, log loss). ``max_regression``: how much worse than the champion
    the challenger may be, in the metric's units; signed, so a negative value demands an
    improvement. ``None`` switches that half of the rule off.
    """

    metric: str
    floor: float | None = None
    max_regression: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"gate rule for unknown metric {self.metric!r}; known: {list(METRIC_NAMES)}")
        if self.floor is None and self.max_regression is None:
            raise ValueError(f"gate rule for {self.metric!r} sets neither floor nor max_regression")


DEFAULT_RULES = (
    GateRule("roc_auc", floor=0.70, max_regression=0.005),
    GateRule("pr_auc", floor=0.20, max_regression=0.01),
    GateRule("brier_score", floor=0.25, max_regression=0.005),
)


@dataclass(frozen=True)
class RuleOutcome:
    metric: str
    challenger: float
    champion: float | None
    floor: float | None
    max_regression: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    bootstrap: bool  # no champion: floors only
    outcomes: tuple[RuleOutcome, ...]

    @property
    def summary(self) -> str:
        failed = [o for o in self.outcomes if not o.passed]
        if not failed:
            kind = "bootstrap deploy on floors alone" if self.bootstrap else "no regression"
            return f"pass ({kind}; {len(self.outcomes)} rules)"
        return "fail: " + "; ".join(f"{o.metric}: {o.reason}" for o in failed)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "bootstrap": self.bootstrap,
                "outcomes": [asdict(o) for o in self.outcomes]}


def _bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def evaluate_gate(challenger: dict[str, float], champion: dict[str, float] | None,
                  rules: tuple[GateRule, ...] | list[GateRule]) -> GateVerdict:
    """Apply ``rules`` to the challenger's metrics, against the champion's when there is one.

    Both metric dicts must come from the same holdout rows. A missing or NaN challenger
    metric fails its rule; with no champion only floors apply (a bootstrap deploy).
    """
    if not rules:
        raise ValueError("the deployment gate has no rules")
    bootstrap = champion is None
    outcomes = []
    for rule in rules:
        higher = rule.metric in HIGHER_IS_BETTER
        value = challenger.get(rule.metric)
        base = None if bootstrap else champion.get(rule.metric)
        reasons = []
        if _bad(value):
            reasons.append(f"challenger {rule.metric} is missing or NaN")
        else:
            if rule.floor is not None and (value < rule.floor if higher else value > rule.floor):
                word = "below the floor" if higher else "above the ceiling"
                reasons.append(f"{value:.4f} is {word} {rule.floor}")
            if rule.max_regression is not None and not bootstrap:
                if _bad(base):
                    reasons.append(f"champion {rule.metric} is missing or NaN")
                else:
                    # Positive regression = the challenger is worse by that much.
                    regression = (base - value) if higher else (value - base)
                    if regression > rule.max_regression:
                        reasons.append(
                            f"regressed by {regression:.4f} vs champion {base:.4f}"
                            f" (allowed {rule.max_regression})")
        outcomes.append(RuleOutcome(
            metric=rule.metric, challenger=float("nan") if value is None else float(value),
            champion=None if base is None else float(base), floor=rule.floor,
            max_regression=rule.max_regression, passed=not reasons,
            reason="; ".join(reasons) or "ok",
        ))
    return GateVerdict(all(o.passed for o in outcomes), bootstrap, tuple(outcomes))
