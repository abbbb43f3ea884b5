"""Gate rules as pure functions."""

import dataclasses
import math

import numpy as np
import pytest

from churn_assets.core.gate import DEFAULT_RULES, GateRule, evaluate_gate
from churn_assets.core.bootstrap import paired_bootstrap
from churn_assets.core.uncertainty import delong_test
from churn_assets.defs.resources import DeploymentGateRules
from churn_assets.settings import CONFIG_ENV, Settings, SettingsError, load_settings

GOOD = {"roc_auc": 0.80, "pr_auc": 0.45, "brier_score": 0.12, "brier_skill": 0.1, "log_loss": 0.40, "f1": 0.5,
        "accuracy": 0.8, "precision": 0.4, "recall": 0.6}


def test_bootstrap_applies_floors_only():
    verdict = evaluate_gate(GOOD, None, DEFAULT_RULES)
    assert verdict.passed and verdict.bootstrap
    assert "bootstrap" in verdict.summary


def test_regression_within_tolerance_passes_and_beyond_fails():
    rules = [GateRule("roc_auc", max_regression=0.005, mode="point")]
    assert evaluate_gate({"roc_auc": 0.796}, {"roc_auc": 0.80}, rules).passed
    verdict = evaluate_gate({"roc_auc": 0.794}, {"roc_auc": 0.80}, rules)
    assert not verdict.passed
    assert "regressed by 0.0060" in verdict.summary and "0.8000" in verdict.summary


def test_negative_tolerance_demands_an_improvement():
    rules = [GateRule("roc_auc", max_regression=-0.01, mode="point")]
    assert not evaluate_gate({"roc_auc": 0.805}, {"roc_auc": 0.80}, rules).passed
    assert evaluate_gate({"roc_auc": 0.811}, {"roc_auc": 0.80}, rules).passed


def test_losses_are_judged_in_the_other_direction():
    rules = [GateRule("brier_score", floor=0.2, max_regression=0.005, mode="point")]
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
    verdict = evaluate_gate({"roc_auc": 0.9}, {"roc_auc": math.nan}, [GateRule("roc_auc", max_regression=0.0, mode="point")])
    assert not verdict.passed and "champion roc_auc" in verdict.summary


def test_every_rule_is_reported_with_both_values():
    rules = [GateRule(r.metric, r.floor, r.max_regression, "point", against=r.against) for r in DEFAULT_RULES]
    verdict = evaluate_gate(GOOD, dict(GOOD, roc_auc=0.9), rules, best_recent={"version": "v0001",
                                                                                "metrics": {"roc_auc": 0.8}})
    assert [o.metric for o in verdict.outcomes] == [r.metric for r in DEFAULT_RULES]
    roc = verdict.outcomes[0]
    assert (roc.challenger, roc.champion, roc.passed, roc.against) == (0.80, 0.9, False, "champion")
    assert all(o.passed for o in verdict.outcomes[1:])
    recent = next(o for o in verdict.outcomes if o.against == "best_recent")
    assert (recent.champion, recent.versus) == (0.8, "v0001")


def test_a_champion_that_could_not_be_compared_is_no_pass():
    """A champion whose training weeks cover the whole holdout (a replayed week) has no
    rows to be compared on: the gate must not fall back to floors alone."""
    verdict = evaluate_gate(GOOD, None, DEFAULT_RULES, champion_version="v0007")
    assert not verdict.passed and not verdict.bootstrap
    assert "champion v0007 could not be scored" in verdict.summary and "no comparison, no pass" in verdict.summary
    assert evaluate_gate(GOOD, None, DEFAULT_RULES).passed  # no champion at all: a bootstrap


def test_a_rule_without_mode_means_what_the_built_in_rule_of_its_metric_means():
    for rule in DEFAULT_RULES:
        restated = GateRule(rule.metric, rule.floor, rule.max_regression, against=rule.against)
        assert restated.mode == rule.mode
    assert GateRule("f1", floor=0.2, max_regression=0.01).mode == "point"  # no paired interval for f1


def test_the_best_recent_rule_catches_small_losses_that_add_up():
    """Each challenger only slightly worse than the champion before it: week by week the
    champion rule lets every one through, the comparison with the best recent version
    refuses the one that has drifted too far below it."""
    y, champion, tied, worse = scored_holdout()
    best = delong_test(y, worse, champion)  # the recent version the challenger lost to
    close = delong_test(y, worse, worse + np.random.default_rng(1).normal(scale=0.05, size=len(y)))
    rules = [GateRule("roc_auc", max_regression=0.0025), GateRule("roc_auc", max_regression=0.01, against="best_recent")]
    metrics = {"roc_auc": close.challenger}
    verdict = evaluate_gate(metrics, {"roc_auc": close.champion}, rules, comparisons={"roc_auc": close.to_dict()},
                            best_recent={"version": "v0003", "metrics": {"roc_auc": best.champion},
                                         "comparisons": {"roc_auc": best.to_dict()}},
                            champion_version="v0005")
    champion_rule, recent_rule = verdict.outcomes
    assert champion_rule.passed and not recent_rule.passed and not verdict.passed
    assert recent_rule.versus == "v0003" and "clearly worse" in recent_rule.reason
    no_recent = evaluate_gate(metrics, {"roc_auc": close.champion}, rules, comparisons={"roc_auc": close.to_dict()},
                              champion_version="v0005")
    assert no_recent.passed and "no recent version" in no_recent.outcomes[1].reason


def test_brier_skill_binds_where_the_raw_brier_ceiling_cannot():
    """At an 11% churn rate predicting the base rate for everyone scores Brier 0.098, far
    below any sensible raw ceiling; its skill is 0 and the default floor refuses it."""
    from churn_assets.core.metrics import churn_metrics

    rng = np.random.default_rng(2)
    y = (rng.random(5000) < 0.11).astype(int)
    useless = churn_metrics(y, np.full(5000, y.mean()), 0.5)
    assert useless["brier_score"] < 0.1 and abs(useless["brier_skill"]) < 1e-9
    skill = next(r for r in DEFAULT_RULES if r.metric == "brier_skill")
    verdict = evaluate_gate(dict(GOOD, brier_skill=useless["brier_skill"] - 0.01), None, [skill])
    assert not verdict.passed and "below the floor" in verdict.summary


def test_rule_validation():
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        GateRule("auc", floor=0.5)
    with pytest.raises(ValueError, match="neither floor nor max_regression"):
        GateRule("roc_auc")
    with pytest.raises(ValueError, match="no rules"):
        evaluate_gate(GOOD, None, [])


# --- noninferiority: real scores, real DeLong comparisons -------------------------------

def scored_holdout(n: int = 5000, seed: int = 0):
    """Labels and three models' scores on the same rows: the champion, a challenger that
    is the champion plus a little noise (tied), one that lost much of the signal."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * signal - 2.0)))).astype(int)
    champion = signal + rng.normal(scale=0.8, size=n)
    tied = champion + rng.normal(scale=0.05, size=n)
    worse = signal + rng.normal(scale=1.6, size=n)
    return y, champion, tied, worse


def gate_on_scores(y, challenger, champion, rule):
    diff = delong_test(y, challenger, champion)
    return diff, evaluate_gate({rule.metric: diff.challenger}, {rule.metric: diff.champion}, [rule],
                               comparisons={rule.metric: dataclasses.asdict(diff)})


NONINFERIOR = GateRule("roc_auc", floor=0.6, max_regression=0.005, mode="noninferiority")


def test_noninferiority_refuses_a_clear_drop_and_accepts_a_tie():
    y, champion, tied, worse = scored_holdout()
    diff, verdict = gate_on_scores(y, worse, champion, NONINFERIOR)
    assert diff.difference < -0.04 and diff.one_sided_high < -0.005  # really worse
    assert not verdict.passed and "clearly worse" in verdict.summary
    assert f"regressed by {-diff.difference:.4f} vs champion {diff.champion:.4f}" in verdict.summary
    outcome = verdict.outcomes[0]
    assert outcome.mode == "noninferiority" and outcome.confidence == 0.95
    diff, verdict = gate_on_scores(y, tied, champion, NONINFERIOR)
    assert abs(diff.difference) < 0.005
    assert verdict.passed and "within" in verdict.outcomes[0].reason


def test_noninferiority_passes_a_drop_within_noise_that_the_point_rule_refuses():
    # 400 rows: a challenger no better or worse in truth (noise of the same size as the
    # champion's, drawn afresh), measured about 0.011 lower on these rows.
    rng = np.random.default_rng(11)
    n = 400
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * signal - 1.0)))).astype(int)
    champion = signal + rng.normal(scale=0.8, size=n)
    challenger = signal + rng.normal(scale=0.8, size=n)
    diff = delong_test(y, challenger, champion)
    assert -0.03 < diff.difference < -0.006, diff.difference
    _, verdict = gate_on_scores(y, challenger, champion, NONINFERIOR)
    assert verdict.passed and "within noise" in verdict.outcomes[0].reason
    _, point = gate_on_scores(y, challenger, champion, GateRule("roc_auc", max_regression=0.005, mode="point"))
    assert not point.passed and "regressed by" in point.summary


def test_noninferiority_without_a_comparison_fails_closed():
    rules = [NONINFERIOR]
    for comparisons in (None, {}, {"pr_auc": {}}):
        verdict = evaluate_gate({"roc_auc": 0.8}, {"roc_auc": 0.8}, rules, comparisons=comparisons)
        assert not verdict.passed and "no paired comparison for roc_auc" in verdict.summary
    undefined = dataclasses.asdict(delong_test(np.zeros(10, int), np.arange(10.0), np.arange(10.0)))
    verdict = evaluate_gate({"roc_auc": 0.8}, {"roc_auc": 0.8}, rules, comparisons={"roc_auc": undefined})
    assert not verdict.passed and "undefined" in verdict.summary


def test_noninferiority_keeps_floors_and_bootstrap_needs_no_comparison():
    y, champion, tied, _ = scored_holdout()
    high_floor = GateRule("roc_auc", floor=0.99, max_regression=0.005, mode="noninferiority")
    # Against a champion above the floor, a challenger below it is refused.
    diff = delong_test(y, tied, champion)
    verdict = evaluate_gate({"roc_auc": diff.challenger}, {"roc_auc": 0.995}, [high_floor],
                            comparisons={"roc_auc": diff.to_dict()})
    assert not verdict.passed and "below the floor 0.99" in verdict.summary
    bootstrap = evaluate_gate({"roc_auc": 0.8}, None, [NONINFERIOR])
    assert bootstrap.passed and bootstrap.bootstrap
    assert not evaluate_gate({"roc_auc": 0.8}, None, [high_floor]).passed  # a bootstrap meets every floor


def test_a_floor_the_champion_fails_too_defers_to_the_comparison():
    """After the market moved, production fails the floor as well: refusing would keep the
    older of two failing models. The rule's comparison decides, and a floor-only rule
    (nothing to compare with) stays absolute."""
    y, champion, tied, worse = scored_holdout()
    high_floor = GateRule("roc_auc", floor=0.99, max_regression=0.005, mode="noninferiority")
    _, verdict = gate_on_scores(y, tied, champion, high_floor)
    assert verdict.passed and "and so is champion" in verdict.outcomes[0].reason
    _, clearly_worse = gate_on_scores(y, worse, champion, high_floor)
    assert not clearly_worse.passed and "clearly worse" in clearly_worse.summary
    floor_only = evaluate_gate({"roc_auc": 0.8}, {"roc_auc": 0.7}, [GateRule("roc_auc", floor=0.99)],
                               champion_version="v0001")
    assert not floor_only.passed and "below the floor 0.99" in floor_only.summary


def test_confidence_of_rule_and_comparison():
    y, champion, _, worse = scored_holdout(n=1500, seed=3)
    at_95 = delong_test(y, worse, champion, confidence=0.95)
    at_99 = delong_test(y, worse, champion, confidence=0.99)
    rule_99 = GateRule("roc_auc", max_regression=0.005, mode="noninferiority", confidence=0.99)
    metrics = ({"roc_auc": at_95.challenger}, {"roc_auc": at_95.champion})
    # DeLong carries its standard error: the rule's level is recomputed exactly.
    recomputed = evaluate_gate(*metrics, [rule_99], comparisons={"roc_auc": at_95.to_dict()})
    direct = evaluate_gate(*metrics, [rule_99], comparisons={"roc_auc": at_99.to_dict()})
    assert recomputed.outcomes[0].reason == direct.outcomes[0].reason
    assert recomputed.outcomes[0].confidence == 0.99
    # A bootstrap interval cannot be re-cut: decided at its own level, and said so.
    boot = paired_bootstrap(y, 1 / (1 + np.exp(-worse)), 1 / (1 + np.exp(-champion)),
                            metrics=("roc_auc",), n_resamples=200, confidence=0.95)["roc_auc"]
    verdict = evaluate_gate(*metrics, [rule_99], comparisons={"roc_auc": boot.to_dict()})
    assert "computed at 0.95 confidence, the rule asks 0.99; decided at 0.95" in verdict.outcomes[0].reason
    assert verdict.outcomes[0].confidence == 0.95


def test_noninferiority_rule_validation():
    with pytest.raises(ValueError, match="mode 'strict'"):
        GateRule("roc_auc", max_regression=0.005, mode="strict")
    for confidence in (0.5, 1.0, 0.3, math.nan):
        with pytest.raises(ValueError, match="confidence must be strictly between 0.5 and 1"):
            GateRule("roc_auc", max_regression=0.005, mode="noninferiority", confidence=confidence)
    with pytest.raises(ValueError, match="max_regression >= 0"):
        GateRule("roc_auc", max_regression=-0.01, mode="noninferiority")


# --- settings: the rule's mode and confidence, checked when the settings load ----------

def load_rules(tmp_path, body: str):
    path = tmp_path / "config.toml"
    path.write_text(body)
    return load_settings({CONFIG_ENV: str(path)}).gate_rules


def test_default_roc_auc_rule_is_noninferiority_and_reaches_the_gate_resource():
    roc = next(r for r in DEFAULT_RULES if r.metric == "roc_auc")
    assert (roc.mode, roc.max_regression, roc.confidence) == ("noninferiority", 0.0025, 0.95)
    # The Dagster resource the check and the deploy step read must keep mode and confidence.
    assert DeploymentGateRules.from_rules(DEFAULT_RULES).gate_rules() == DEFAULT_RULES
    assert DeploymentGateRules().gate_rules() == DEFAULT_RULES
    y, champion, tied, _ = scored_holdout()
    diff = delong_test(y, tied, champion)
    metrics = dict(GOOD, roc_auc=diff.challenger), dict(GOOD, roc_auc=diff.champion)
    roc_rules = [r for r in DEFAULT_RULES if r.metric == "roc_auc" and r.against == "champion"]
    assert evaluate_gate(*metrics, roc_rules, comparisons={"roc_auc": diff.to_dict()}).passed
    assert not evaluate_gate(*metrics, roc_rules).passed  # no comparison: fails closed


def test_settings_carry_mode_and_confidence(tmp_path):
    rules = load_rules(tmp_path, '[[gate.rules]]\nmetric = "roc_auc"\nmax_regression = 0.01\n'
                                 'mode = "noninferiority"\nconfidence = 0.9\n')
    assert rules == (GateRule("roc_auc", max_regression=0.01, mode="noninferiority", confidence=0.9),)
    assert load_settings({}).gate_rules == DEFAULT_RULES
    assert Settings().with_rules(DEFAULT_RULES).gate_rules == DEFAULT_RULES


@pytest.mark.parametrize("line, key, words", [
    ('mode = "bayesian"', "gate.rules.0.mode", "noninferiority"),
    ("confidence = 1.0", "gate.rules.0.confidence", "strictly between 0.5 and 1"),
    ("confidence = 0.5", "gate.rules.0.confidence", "strictly between 0.5 and 1"),
    ("confidence = nan", "gate.rules.0.confidence", "finite"),
    ('confidence = "high"', "gate.rules.0.confidence", "number"),
])
def test_settings_reject_bad_mode_or_confidence_naming_the_key(tmp_path, line, key, words):
    with pytest.raises(SettingsError) as error:
        load_rules(tmp_path, f'[[gate.rules]]\nmetric = "roc_auc"\nmax_regression = 0.01\n{line}\n')
    message = str(error.value)
    assert f"config.toml: {key}:" in message and words in message, message
