"""The deployment gate: per-metric rules a challenger must pass to replace the champion."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from scipy.stats import norm

from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from churn_assets.core.uncertainty import PairedDifference, noninferiority

GATE_MODES = ("point", "noninferiority")
# Whom a rule's regression is judged against: the model in production, or the best of the
# last few registered versions on this holdout (a guard against small accepted losses
# adding up week after week, which a comparison with the champion alone cannot see).
GATE_REFERENCES = ("champion", "best_recent")
# Metrics the evaluation compares with a paired interval (core.evaluation.COMPARED); a
# rule on one of them is judged by noninferiority unless it says otherwise, as every
# built-in rule is. Threshold metrics (accuracy, precision, recall, f1) have no paired
# interval, so their rules are judged on the point values.
PAIRED_METRICS = ("roc_auc", "pr_auc", "brier_score", "brier_skill", "log_loss", "ece")


def default_mode(metric: str) -> str:
    """The mode of a rule that does not name one: the built-in rules' mode for that metric."""
    return "noninferiority" if metric in PAIRED_METRICS else "point"


@dataclass(frozen=True)
class GateRule:
    """One metric's rule.

    ``floor``: the absolute bound, a minimum for scores (ROC AUC) and a maximum for
    losses (Brier score, log loss, ECE). ``max_regression``: how much worse than the
    champion the challenger may be, in the metric's units; signed, so a negative value
    demands an improvement. ``None`` switches that half of the rule off.

    ``mode`` says how ``max_regression`` is judged. ``"point"``: on the two holdout
    values as measured, so holdout noise alone can refuse a challenger. ``"noninferiority"``:
    refuse only when the paired comparison shows, at one-sided ``confidence``, that the
    challenger is worse by more than ``max_regression`` ("clearly worse"); a drop the
    data cannot tell from noise passes. None: ``default_mode(metric)``. Floors are always
    judged on the point value. ``against``: "champion" (the production model) or
    "best_recent" (the recent version that scored best on this holdout).
    """

    metric: str
    floor: float | None = None
    max_regression: float | None = None
    mode: str | None = None
    confidence: float = 0.95
    against: str = "champion"

    def __post_init__(self) -> None:
        if self.mode is None:
            object.__setattr__(self, "mode", default_mode(self.metric))
        if self.against not in GATE_REFERENCES:
            raise ValueError(f"gate rule for {self.metric!r}: against {self.against!r} is not one of"
                             f" {list(GATE_REFERENCES)}")
        if self.against == "best_recent" and (self.max_regression is None or self.floor is not None):
            raise ValueError(f"gate rule for {self.metric!r} against the best recent version needs"
                             " max_regression and no floor (floors are judged once, against the champion)")
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"gate rule for unknown metric {self.metric!r}; known: {list(METRIC_NAMES)}")
        if self.floor is None and self.max_regression is None:
            raise ValueError(f"gate rule for {self.metric!r} sets neither floor nor max_regression")
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate rule for {self.metric!r}: mode {self.mode!r} is not one of {list(GATE_MODES)}")
        if not (isinstance(self.confidence, (int, float)) and 0.5 < self.confidence < 1):
            raise ValueError(f"gate rule for {self.metric!r}: confidence must be strictly between 0.5 and 1,"
                             f" got {self.confidence!r}")
        if self.mode == "noninferiority" and self.max_regression is not None and self.max_regression < 0:
            # "Clearly worse by more than a negative amount" would refuse any challenger
            # that is not clearly better; that is a superiority test, not this rule.
            raise ValueError(f"gate rule for {self.metric!r}: a noninferiority rule needs max_regression >= 0")


# Derived from the gate study (bench/gate_study.py, BENCHMARKS.md "Gate study"), which
# replays the real weekly loop; see there for the error rates of each rule.
DEFAULT_RULES = (
    GateRule("roc_auc", floor=0.70, max_regression=0.0025, mode="noninferiority"),
    GateRule("roc_auc", max_regression=0.01, mode="noninferiority", against="best_recent"),
    GateRule("pr_auc", floor=0.20, max_regression=0.01, mode="noninferiority"),
    GateRule("brier_skill", floor=0.0, max_regression=0.02, mode="noninferiority"),
)
# How many of the newest registered versions the "best_recent" rules look at.
RECENT_VERSIONS = 4


@dataclass(frozen=True)
class RuleOutcome:
    metric: str
    challenger: float
    champion: float | None
    floor: float | None
    max_regression: float | None
    passed: bool
    reason: str
    mode: str = "point"
    confidence: float | None = None  # the level the regression was judged at (noninferiority)
    against: str = "champion"
    versus: str | None = None  # the version judged against


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


_DIFFERENCE_FIELDS = {f.name for f in dataclasses.fields(PairedDifference)}


def _comparison_at(comparison: dict, confidence: float) -> tuple[PairedDifference, float, str]:
    """The comparison as a PairedDifference whose one-sided bounds are at ``confidence``
    if that can be known, with the level actually used and a note when it differs.

    Normal-theory comparisons (DeLong) carry their standard error, so any level is exact.
    A bootstrap interval was cut at its own level and the resamples are gone: its
    one-sided bound at the comparison's confidence is used, and the note says so.
    """
    diff = PairedDifference(**{k: v for k, v in comparison.items() if k in _DIFFERENCE_FIELDS})
    if math.isclose(diff.confidence, confidence, abs_tol=1e-9):
        return diff, confidence, ""
    if diff.method.startswith("DeLong") and math.isfinite(diff.standard_error):
        one, two = norm.ppf(confidence), norm.ppf((1 + confidence) / 2)
        d, se = diff.difference, diff.standard_error
        return dataclasses.replace(diff, confidence=confidence, ci_low=d - two * se, ci_high=d + two * se,
                                   one_sided_low=d - one * se, one_sided_high=d + one * se), confidence, ""
    note = (f" (the comparison was computed at {diff.confidence:.4g} confidence, the rule asks"
            f" {confidence:.4g}; decided at {diff.confidence:.4g})")
    return diff, diff.confidence, note


def _noninferiority(rule: GateRule, comparisons: dict | None, regression: float,
                    versus: str) -> tuple[bool, str, float | None]:
    """(passed, reason, confidence level used) of a noninferiority rule against a champion;
    ``regression``: how much worse the challenger measured (positive = worse)."""
    comparison = (comparisons or {}).get(rule.metric)
    if not isinstance(comparison, dict):
        # Fail closed: without the paired comparison there is no evidence either way, and
        # silently falling back to the point rule would change the rule's meaning.
        return False, (f"noninferiority rule has no paired comparison for {rule.metric}"
                       " (evaluation_report.comparisons lacks it)"), None
    try:
        diff, level, note = _comparison_at(comparison, rule.confidence)
    except TypeError as exc:
        return False, f"paired comparison for {rule.metric} is malformed: {exc}", None
    if not (math.isfinite(diff.difference) and math.isfinite(diff.standard_error)):
        # uncertainty.noninferiority lets an undefined difference pass (floors reject
        # undefined metrics); a gate must not promote on a comparison it could not compute.
        return False, f"paired comparison for {rule.metric} is undefined (difference or standard error NaN)", level
    decision = noninferiority(diff, rule.max_regression, rule.metric in HIGHER_IS_BETTER)
    if decision.passed:
        return True, decision.reason + note, level
    return False, f"regressed by {regression:.4f} vs {versus} {diff.champion:.4f}: {decision.reason}{note}", level


def evaluate_gate(challenger: dict[str, float], champion: dict[str, float] | None,
                  rules: tuple[GateRule, ...] | list[GateRule],
                  comparisons: dict[str, dict] | None = None, best_recent: dict | None = None,
                  champion_version: str | None = None) -> GateVerdict:
    """Apply ``rules`` to the challenger's metrics, against the champion's when there is one.

    Both metric dicts must come from the same holdout rows. A missing or NaN challenger
    metric fails its rule; with no champion only floors apply (a bootstrap deploy).
    ``comparisons``: metric -> ``dataclasses.asdict`` of an ``uncertainty.PairedDifference``
    (challenger - champion on those rows), needed by noninferiority rules; a rule whose
    comparison is missing or undefined fails. ``champion_version`` without ``champion``
    metrics means a champion exists but could not be compared: rules on a regression
    then fail (no comparison, no pass). ``best_recent``: ``HoldoutEvaluation.best_recent``
    for the rules ``against="best_recent"``; without it they pass with a note.
    """
    if not rules:
        raise ValueError("the deployment gate has no rules")
    bootstrap = champion is None and champion_version is None
    outcomes = []
    for rule in rules:
        recent = rule.against == "best_recent"
        if recent:
            base_metrics, base_comparisons = ((best_recent or {}).get("metrics"),
                                              (best_recent or {}).get("comparisons"))
            versus = (best_recent or {}).get("version")
        else:
            base_metrics, base_comparisons, versus = champion, comparisons, champion_version
        higher = rule.metric in HIGHER_IS_BETTER
        value = challenger.get(rule.metric)
        base = None if base_metrics is None else base_metrics.get(rule.metric)
        reasons, notes, level = [], [], None
        judged = rule.max_regression is not None and not bootstrap
        if _bad(value):
            reasons.append(f"challenger {rule.metric} is missing or NaN")
        else:
            if rule.floor is not None and (value < rule.floor if higher else value > rule.floor):
                word = "below the floor" if higher else "above the ceiling"
                theirs = None if champion is None else champion.get(rule.metric)
                if (rule.max_regression is not None and not _bad(theirs)
                        and (theirs < rule.floor if higher else theirs > rule.floor)):
                    # A floor keeps a model below it from replacing one above it. When the
                    # market moved and production fails it too, refusing would keep the
                    # older of two failing models: the rule's comparison with it decides
                    # instead. A rule with a floor alone has no comparison; it stays absolute.
                    notes.append(f"{value:.4f} is {word} {rule.floor}, and so is champion"
                                 f" {champion_version or ''} ({theirs:.4f}): judged against it")
                else:
                    reasons.append(f"{value:.4f} is {word} {rule.floor}")
            if judged and recent and base_metrics is None:
                notes.append("no recent version could be compared on this holdout")
            elif judged and base_metrics is None:
                reasons.append(f"champion {champion_version} could not be scored on holdout rows clear of"
                               " its own training weeks: no comparison, no pass")
            elif judged and _bad(base):
                reasons.append(f"{'best recent version' if recent else 'champion'} {rule.metric} is missing or NaN")
            elif judged:
                # Positive regression = the challenger is worse by that much.
                regression = (base - value) if higher else (value - base)
                if rule.mode == "noninferiority":
                    who = (f"best recent version {versus}" if recent else
                           f"champion {versus}" if versus else "champion")
                    passed, why, level = _noninferiority(rule, base_comparisons, regression, who)
                    (notes if passed else reasons).append(why)
                elif regression > rule.max_regression:
                    reasons.append(
                        f"regressed by {regression:.4f} vs {'best recent version ' if recent else 'champion '}"
                        f"{versus + ' ' if versus else ''}{base:.4f}"
                        f" (allowed {rule.max_regression})")
        reason = "; ".join(reasons) or "; ".join(notes) or "ok"
        outcomes.append(RuleOutcome(
            metric=rule.metric, challenger=float("nan") if value is None else float(value),
            champion=None if base is None else float(base), floor=rule.floor,
            max_regression=rule.max_regression, passed=not reasons, reason=reason,
            mode=rule.mode, confidence=level, against=rule.against, versus=versus,
        ))
    return GateVerdict(all(o.passed for o in outcomes), bootstrap, tuple(outcomes))
