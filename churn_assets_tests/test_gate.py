"""Gate rules as pure functions."""

import math

import pytest

from churn_assets.core.gate import DEFAULT_RULES, GateRule, evaluate_gate

GOOD = {"roc_auc": 0.80, "pr_auc": 0.45, "brier_score": 0.12, "log_loss": 0.40, "f1": 0.5,
        "accuracy": 0.8, "precision": 0.4, "recall": 0.6}


def test_bootstrap_applies_floors_only():
    verdict = evaluate_gate(GOOD, None, DEFAULT_RULES)
    assert verdict.passed and verdict.bootstrap
    assert "bootstrap" in verdict.summary


def test_regression_within_tolerance_passes_and_beyond_fails():
    rules = [GateRule("roc_auc", max_regression=0.005)]
    assert evaluate_gate({"roc_auc": 0.796}, {"roc_auc": 0.80}, rules).passed
    verdict = evaluate_gate({"roc_auc": 0.794}, {"roc_auc": 0.80}, rules)
    assert not verdict.passed
    assert "regressed by 0.0060" in verdict.summary and "0.8000" in verdict.summary


def test_negative_tolerance_demands_an_improvement():
    rules = [GateRule("roc_auc", max_regression=-0.01)]
    assert not evaluate_gate({"roc_auc": 0.805}, {"roc_auc": 0.80}, rules).passed
    assert evaluate_gate({"roc_auc": 0.811}, {"roc_auc": 0.80}, rules).passed


def test_losses_are_judged_in_the_other_direction():
    rules = [GateRule("brier_score", floor=0.2, max_regression=0.005)]
    assert evaluate_gate({"brier_score": 0.10}, {"brier_score": 0.104}, rules).passed
    worse = evaluate_gate({"brier_score": 0.11}, {"brier_score": 0.10}, rules)
    assert not worse.passed and "regressed" in worse.summary
    ceiling = evaluate_gate({"brier_score": 0.21}, None, rules)
    assert not ceiling.passed and "above the ceiling 0.2" in ceiling.summary


@pytest.mark.parametrize("challenger", [{"roc_auc": math.nan}, {}, {"roc_auc": math.inf}])
def test_missing_or_nan_metric_fails(challenger):
    verdict = evaluate_gate(challenger, {"roc_auc": 0.8}, [GateRule("roc_auc", floor=0.5)])
    assert not verdict.passed
    assert "missing or NaN" in verdict.summary


def test_nan_champion_metric_fails_the_regression_rule():
    verdict = evaluate_gate({"roc_auc": 0.9}, {"roc_auc": math.nan}, [GateRule("roc_auc", max_regression=0.0)])
    assert not verdict.passed and "champion roc_auc" in verdict.summary


def test_every_rule_is_reported_with_both_values():
    verdict = evaluate_gate(GOOD, dict(GOOD, roc_auc=0.9), DEFAULT_RULES)
    assert [o.metric for o in verdict.outcomes] == [r.metric for r in DEFAULT_RULES]
    roc = verdict.outcomes[0]
    assert (roc.challenger, roc.champion, roc.passed) == (0.80, 0.9, False)
    assert all(o.passed for o in verdict.outcomes[1:])


def test_rule_validation():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        GateRule("auc", floor=0.5)
    with pytest.raises(ValueError, match="neither floor nor max_regression"):
        GateRule("roc_auc")
    with pytest.raises(ValueError, match="no rules"):
        evaluate_gate(GOOD, None, [])
