"""The gate's verdict in plain words, and the model card's intended use and label wording."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from churn_assets.core.gate import GateRule, evaluate_gate
from churn_assets.health.card import render_model_card
from churn_assets.health.gate_words import interval, refusal_line, rule_in_words, rule_text, signed
from churn_assets.settings import Settings, SettingsError, load_settings

CHAMPION = {"roc_auc": 0.800, "pr_auc": 0.40, "brier_score": 0.080}


def comparison(metric: str, difference: float, low: float, high: float, one_low: float, one_high: float) -> dict:
    return {"metric": metric, "challenger": 0.0, "champion": 0.0, "difference": difference,
            "standard_error": 0.004, "ci_low": low, "ci_high": high, "p_value": 0.01, "method": "DeLong",
            "confidence": 0.95, "one_sided_low": one_low, "one_sided_high": one_high}


def test_a_clearly_worse_roc_auc_reads_as_a_sentence_with_its_interval():
    rule = GateRule("roc_auc", floor=0.7, max_regression=0.0025, mode="noninferiority")
    comparisons = {"roc_auc": comparison("roc_auc", -0.012, -0.019, -0.005, -0.018, -0.006)}
    verdict = evaluate_gate({"roc_auc": 0.788}, {"roc_auc": 0.800}, [rule], comparisons)
    assert not verdict.passed
    words = rule_in_words(verdict.outcomes[0], comparisons["roc_auc"])
    assert words == ("ROC AUC is clearly lower than the champion's by 0.012 (95% interval of the"
                     " difference -0.019 to -0.005; allowed 0.0025)")
    assert refusal_line(verdict.to_dict(), comparisons, "v0007") == f"refused: {words}; production stays v0007"


def test_a_drop_within_noise_passes_and_says_so():
    rule = GateRule("roc_auc", floor=0.7, max_regression=0.0025, mode="noninferiority")
    comparisons = {"roc_auc": comparison("roc_auc", -0.004, -0.012, 0.004, -0.011, 0.003)}
    verdict = evaluate_gate({"roc_auc": 0.796}, {"roc_auc": 0.800}, [rule], comparisons)
    assert verdict.passed
    assert rule_in_words(verdict.outcomes[0], comparisons["roc_auc"]).startswith(
        "ROC AUC is lower than the champion's by 0.004, within noise (95% interval")


def test_a_loss_that_rose_is_higher_and_a_floor_is_a_ceiling():
    rules = [GateRule("brier_score", floor=0.25, max_regression=0.005, mode="point")]
    verdict = evaluate_gate({"brier_score": 0.092}, {"brier_score": 0.080}, rules)
    assert rule_in_words(verdict.outcomes[0]) == "Brier score is higher than the champion's by 0.012 (allowed 0.005)"
    verdict = evaluate_gate({"brier_score": 0.31}, None, rules)
    assert rule_in_words(verdict.outcomes[0]) == "Brier score is 0.310, above the ceiling of 0.25"


def test_missing_values_and_unknown_rule_kinds_are_worded_without_guessing():
    rule = GateRule("roc_auc", floor=0.7, max_regression=0.0025, mode="noninferiority")
    verdict = evaluate_gate({"roc_auc": 0.81}, {"roc_auc": 0.80}, [rule], comparisons=None)
    assert rule_in_words(verdict.outcomes[0]) == "no paired comparison of ROC AUC was computed, so the rule cannot pass"
    nan = evaluate_gate({"roc_auc": float("nan")}, None, [GateRule("roc_auc", floor=0.7)])
    assert rule_in_words(nan.outcomes[0]) == "the challenger's ROC AUC could not be computed"
    # A rule kind added later (say, against the best recent version): the gate's own reason.
    later = dict(asdict(verdict.outcomes[0]), mode="best_recent", reason="worse than v0005's 0.83")
    later.update(challenger=0.81, champion=0.80, passed=False)
    assert rule_in_words(later) == "ROC AUC: worse than v0005's 0.83"


def test_rules_read_as_sentences():
    assert rule_text(GateRule("pr_auc", floor=0.2, max_regression=0.01, mode="point")) == (
        "PR AUC >= 0.2, and not lower than the champion's by more than 0.01 (as measured)")
    assert rule_text(GateRule("ece", max_regression=0.01)) == (
        "calibration error (ECE): not clearly higher than the champion's by more than 0.01 (noninferiority at 95%)")
    assert rule_text(GateRule("roc_auc", max_regression=0.01, against="best_recent")) == (
        "ROC AUC: not clearly lower than the best of the recent versions' by more than 0.01 (noninferiority at 95%)")


def test_a_rule_against_the_best_recent_version_names_it():
    outcome = {"metric": "roc_auc", "challenger": 0.74, "champion": 0.76, "floor": None, "max_regression": 0.01,
               "passed": False, "mode": "noninferiority", "against": "best_recent", "versus": "v0003",
               "reason": "regressed by 0.0200 vs best recent version v0003 0.7600: clearly worse"}
    comparison = {"difference": -0.02, "ci_low": -0.03, "ci_high": -0.012, "confidence": 0.95}
    assert rule_in_words(outcome, comparison) == (
        "ROC AUC is clearly lower than the best recent version's (v0003) by 0.020"
        " (95% interval of the difference -0.030 to -0.012; allowed 0.01)")


def test_an_interval_bound_near_zero_keeps_its_side():
    outcome = {"metric": "roc_auc", "challenger": 0.734, "champion": 0.733, "floor": None, "max_regression": -0.2,
               "passed": False, "mode": "point", "reason": "improved by 0.0010, needs 0.2"}
    comparison = {"difference": 0.001, "ci_low": -0.00042, "ci_high": 0.0023, "confidence": 0.95}
    words = rule_in_words(outcome, comparison)
    assert "(95% interval of the difference -0.0004 to +0.0023)" in words
    assert signed(-0.00004) == "-0.00004" and signed(0.0) == "0.000" and signed(-1e-9) == "0.000"
    assert signed(0.0126) == "+0.013" and interval(-0.0234, 0.0126) == "-0.023 to +0.013"


@pytest.mark.parametrize("spec, expected", [
    ("simulator", "active customers of an e-commerce SaaS"),
    ("telco", "a telecom operator's subscribers"),
])
def test_intended_use_defaults_to_the_spec_and_is_a_setting(tmp_path, spec, expected):
    assert expected in Settings(home=tmp_path, spec=spec).intended_use()
    config = tmp_path / "churn.toml"
    config.write_text(f'spec = "{spec}"\n[model_card]\nintended_use = "Ranking B2B accounts for renewals."\n')
    settings = load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(tmp_path)})
    assert settings.intended_use() == "Ranking B2B accounts for renewals."
    config.write_text('[model_card]\nintended_uses = "x"\n')
    with pytest.raises(SettingsError, match=r"model_card\.intended_uses: unknown key; did you mean 'intended_use'"):
        load_settings({"CHURN_ASSETS_CONFIG": str(config), "CHURN_ASSETS_HOME": str(tmp_path)})


def test_a_custom_spec_gets_a_neutral_intended_use(tmp_path):
    import json

    from churn_assets.core.spec import load_spec

    custom = load_spec("telco").to_dict() | {"name": "gym_members"}
    path = tmp_path / "gym.json"
    path.write_text(json.dumps(custom))
    text = Settings(home=tmp_path, spec=str(path)).intended_use()
    assert "(gym_members)" in text and "e-commerce" not in text and "telecom" not in text


def test_the_card_words_the_label_for_any_horizon():
    spec = {"name": "telco", "target_column": "Churn", "label_horizon_days": 0}
    card = render_model_card({"version": "v0001", "feature_spec": spec, "intended_use": "Telecom use."})
    assert "within 0 days" not in card and "the source's own churn flag (`Churn`)" in card
    assert "## Intended use\n\nTelecom use.\n" in card
    card = render_model_card({"version": "v0001", "feature_spec": dict(spec, label_horizon_days=28)})
    assert "churned within 28 days after it, so it is final only 28 days later" in card
    assert "within 1 day after it" in render_model_card({"version": "v1", "feature_spec": dict(spec, label_horizon_days=1)})
