"""The deployment gate's verdict in plain words, for the terminal, alerts and pages.

``core.gate`` explains each rule in a statistician's terms ("one-sided upper 95% bound
+0.00588 of the ROC AUC difference is not below the allowed -0.0025"). An operator
needs the same decision as a sentence: what was worse, by how much, how sure, and
which version keeps serving. These functions read a rule's outcome (``RuleOutcome``
or its ``asdict``) and the paired comparison of its metric, and never re-decide: the
gate's ``passed`` is the verdict, the words only describe it. An outcome they cannot
describe (a rule kind added later) is shown with the gate's own reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass

from churn_assets.core.metrics import HIGHER_IS_BETTER

METRIC_LABELS = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "brier_score": "Brier score",
                 "brier_skill": "Brier skill (share of the base rate's Brier score removed)",
                 "log_loss": "log loss", "ece": "calibration error (ECE)", "accuracy": "accuracy",
                 "precision": "precision", "recall": "recall", "f1": "F1"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, str(metric).replace("_", " "))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _plain(outcome) -> dict:
    return asdict(outcome) if is_dataclass(outcome) else dict(outcome or {})


def _decimals(value: float, digits: int) -> int:
    shown = digits
    while value and round(value, shown) == 0 and shown < 6:
        shown += 1
    return shown


def signed(value: float, digits: int = 3) -> str:
    """``value`` with its sign and ``digits`` decimals, more where those would round a
    nonzero bound to zero: an interval reading "-0.000 to +0.002" hides which side of
    zero its low end is on ("-0.0004" does not)."""
    shown = _decimals(value, digits)
    return f"{value:+.{shown}f}" if round(value, shown) else f"{0.0:.{digits}f}"


def interval(low: float, high: float, digits: int = 3) -> str:
    """"-0.0004 to +0.0020": both bounds signed, with the decimals the closer to zero needs."""
    shown = max(_decimals(low, digits), _decimals(high, digits))
    return f"{signed(low, shown)} to {signed(high, shown)}"


def _interval(comparison: dict | None) -> str:
    """"95% interval of the difference -0.019 to -0.005", or "" without one."""
    c = comparison or {}
    low, high, level = _number(c.get("ci_low")), _number(c.get("ci_high")), _number(c.get("confidence"))
    if low is None or high is None:
        return ""
    return f"{100 * (level or 0.95):.4g}% interval of the difference {interval(low, high)}"


def rule_in_words(outcome, comparison: dict | None = None) -> str:
    """One rule's outcome as a sentence, e.g. "ROC AUC is clearly lower than the
    champion's by 0.012 (95% interval of the difference -0.019 to -0.005; allowed 0.0025)".

    ``outcome``: a ``core.gate.RuleOutcome`` or its dict; ``comparison``: the paired
    comparison of its metric (``asdict(PairedDifference)``), for the interval.
    """
    o = _plain(outcome)
    whose = _whose(o)
    metric = str(o.get("metric"))
    label, higher = metric_label(metric), metric in HIGHER_IS_BETTER
    value, base = _number(o.get("challenger")), _number(o.get("champion"))
    floor, allowed = _number(o.get("floor")), _number(o.get("max_regression"))
    if value is None:
        return f"the challenger's {label} could not be computed"
    failed = not o.get("passed")
    parts = []
    below_floor = floor is not None and (value < floor if higher else value > floor)
    if below_floor:
        parts.append(f"{label} is {value:.3f}, {'below the floor' if higher else 'above the ceiling'}"
                     f" of {floor:g}" + ("" if failed else f", as is {whose} ({base:.3f}): judged against it"
                                         if base is not None else ""))
    regression = None if base is None else (base - value if higher else value - base)
    worse_word = "lower" if higher else "higher"
    if allowed is not None and o.get("champion") is not None and base is None:
        parts.append(f"{whose} {label} could not be computed, so no comparison was possible")
    elif allowed is not None and regression is not None:
        size = f"by {abs(regression):.3f}"
        detail = "; ".join(x for x in (_interval(comparison), f"allowed {allowed:g}") if x)
        if o.get("mode") != "noninferiority":
            if regression > allowed and allowed < 0:  # the rule demands an improvement
                better_word = "higher" if higher else "lower"
                measured = (f"only {-regression:.3f} {better_word} than" if regression < 0
                            else f"{regression:.3f} {worse_word} than" if regression > 0 else "equal to")
                interval = _interval(comparison)
                parts.append(f"{label} is {measured} {whose}"
                             + (f" ({interval})" if interval else "")
                             + f"; the rule asks for at least {-allowed:g} {better_word}")
            elif regression > allowed:
                parts.append(f"{label} is {worse_word} than {whose} {size} ({detail})")
        elif failed and not comparison:
            parts.append(f"no paired comparison of {label} was computed, so the rule cannot pass")
        elif failed and _number(comparison.get("difference")) is None:
            parts.append(f"the paired comparison of {label} is undefined, so the rule cannot pass")
        # The comparison decided; the floor alone may be what failed this outcome.
        elif failed and (not below_floor or "clearly worse" in str(o.get("reason"))):
            parts.append(f"{label} is clearly {worse_word} than {whose} {size} ({detail})")
        elif regression > allowed:
            parts.append(f"{label} is {worse_word} than {whose} {size}, within noise ({detail})")
    if failed and not parts:
        # A rule this module does not know how to word: the gate's own words.
        return f"{label}: {o.get('reason') or 'refused'}"
    if parts:
        return "; ".join(parts)
    return _passed_words(label, value, base, regression, higher, whose)


def _whose(o: dict) -> str:
    """Whom the rule compared with, as a possessive: "the champion's" or "the best recent
    version's (v0003)"."""
    if o.get("against") == "best_recent":
        return f"the best recent version's ({o['versus']})" if o.get("versus") else "the best recent version's"
    return "the champion's"


def _passed_words(label: str, value: float, base: float | None, regression: float | None,
                  higher: bool, whose: str = "the champion's") -> str:
    if base is None or regression is None:
        return f"{label} {value:.3f} clears its floor"
    if regression <= 0:
        better = "higher" if higher else "lower"
        return f"{label} {value:.3f} is {better} than (or equal to) {whose} {base:.3f}"
    return f"{label} {value:.3f} is within the allowance of {whose} {base:.3f}"


def refused_rules(gate: dict | None, comparisons: dict | None = None, best_recent: dict | None = None) -> list[str]:
    """Each failed rule of a verdict (``GateVerdict.to_dict()``) in words; ``comparisons``
    are the champion's, ``best_recent`` the comparison with the best recent version."""
    outcomes = [o for o in (gate or {}).get("outcomes") or [] if isinstance(o, dict)]

    def comparison(o: dict) -> dict | None:
        source = ((best_recent or {}).get("comparisons") if o.get("against") == "best_recent" else comparisons)
        return (source or {}).get(o.get("metric"))

    return [rule_in_words(o, comparison(o)) for o in outcomes if not o.get("passed")]


def refusal_line(gate: dict | None, comparisons: dict | None, production: str | None,
                 best_recent: dict | None = None) -> str:
    """"refused: ROC AUC is clearly lower than the champion's by 0.012 (…); production
    stays v0007" (or "nothing is in production yet" before the first deploy)."""
    rules = refused_rules(gate, comparisons, best_recent) or ["a gate rule failed"]
    stays = f"production stays {production}" if production else "nothing is in production yet"
    return f"refused: {'; '.join(rules)}; {stays}"


def rule_text(rule) -> str:
    """A gate rule (``core.gate.GateRule`` or its settings) as a sentence:
    "ROC AUC >= 0.7, and not clearly lower than the champion's by more than 0.0025
    (noninferiority at 95%)"."""
    metric = str(rule.metric)
    label, higher = metric_label(metric), metric in HIGHER_IS_BETTER
    parts = []
    if rule.floor is not None:
        parts.append(f"{label} {'>=' if higher else '<='} {rule.floor:g}")
    if rule.max_regression is not None:
        worse = "lower" if higher else "higher"
        whose = ("the best of the recent versions'" if getattr(rule, "against", "champion") == "best_recent"
                 else "the champion's")
        if getattr(rule, "mode", "point") == "noninferiority":
            confidence = getattr(rule, "confidence", 0.95)
            parts.append(f"not clearly {worse} than {whose} by more than {rule.max_regression:g}"
                         f" (noninferiority at {100 * confidence:.4g}%)")
        else:
            parts.append(f"not {worse} than {whose} by more than {rule.max_regression:g} (as measured)")
    text = ", and ".join(parts)
    return text if rule.floor is not None else f"{label}: {text}"
