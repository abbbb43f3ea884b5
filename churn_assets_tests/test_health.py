"""Model-health helpers: PSI against hand-computed values, plots, importance, model card."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn_assets.health import plots
from churn_assets.health.card import render_model_card
from churn_assets.health.drift import (
    DriftThresholds,
    FeatureDrift,
    categorical_psi,
    drift_summary,
    feature_drift,
    numeric_psi,
    prediction_drift,
    target_drift,
)
from churn_assets.health.importance import permutation_importance_raw

EPS = 1e-4


def term(cur: float, ref: float) -> float:
    """One PSI term, with the eps floor applied by hand."""
    cur, ref = max(cur, EPS), max(ref, EPS)
    return (cur - ref) * math.log(cur / ref)


def shares(drift: FeatureDrift) -> dict[str, tuple[float, float]]:
    return {b["bin"]: (b["reference_share"], b["current_share"]) for b in drift.bins}


# --- PSI against hand-computed values -------------------------------------------------------

def test_numeric_psi_quartile_bins_empty_bin_and_missing_by_hand():
    # 1..100 has linear-interpolated quartiles 25.75, 50.5, 75.25: exactly 25 values per bin.
    reference = pd.Series(np.arange(1.0, 101.0), name="tenure")
    # 20 rows: 10 in (-inf, 25.75] (incl. -5, below the reference range, and 25.75, on the
    # right-closed edge), 0 in (25.75, 50.5], 5 in (50.5, 75.25], 3 above (incl. 500), 2 NaN.
    current = pd.Series([-5.0, 25.75] + [10.0] * 8 + [60.0] * 5 + [80.0, 99.0, 500.0] + [np.nan] * 2)
    drift = numeric_psi(reference, current, n_bins=4)

    assert [b["bin"] for b in drift.bins] == ["(-inf, 25.75]", "(25.75, 50.5]", "(50.5, 75.25]",
                                             "(75.25, inf)", "missing"]
    assert list(shares(drift).values()) == [(0.25, 0.5), (0.25, 0.0), (0.25, 0.25), (0.25, 0.15), (0.0, 0.1)]
    expected = term(0.5, 0.25) + term(0.0, 0.25) + term(0.25, 0.25) + term(0.15, 0.25) + term(0.1, 0.0)
    assert drift.psi == pytest.approx(expected, rel=1e-12)
    # The same sum written out: the empty bin and the new missing share dominate.
    assert drift.psi == pytest.approx(0.25 * math.log(2) + (1e-4 - 0.25) * math.log(1e-4 / 0.25)
                                      + (-0.1) * math.log(0.6) + (0.1 - 1e-4) * math.log(1000), rel=1e-12)
    assert drift.psi == pytest.approx(2.8697, abs=1e-4)
    assert (drift.feature, drift.kind, drift.status()) == ("tenure", "numeric", "act")
    assert (drift.reference_rows, drift.current_rows) == (100, 20)
    assert (drift.missing_rate_reference, drift.missing_rate_current) == (0.0, 0.1)


def test_numeric_psi_all_missing_reference_depends_only_on_missing_share():
    reference = pd.Series([np.nan] * 50)
    current = pd.Series([np.nan] * 35 + list(range(15)), dtype=float)
    drift = numeric_psi(reference, current)
    assert shares(drift) == {"(-inf, inf)": (0.0, 0.3), "missing": (1.0, 0.7)}
    assert drift.psi == pytest.approx(term(0.3, 0.0) + term(0.7, 1.0), rel=1e-12)
    assert drift.psi == pytest.approx((0.3 - 1e-4) * math.log(3000) + (-0.3) * math.log(0.7), rel=1e-12)
    assert drift.missing_rate_reference == 1.0
    assert numeric_psi(reference, pd.Series([np.nan] * 7)).psi == 0.0


def test_numeric_psi_constant_and_empty_columns():
    constant = pd.Series([5.0] * 40)
    assert numeric_psi(constant, pd.Series([5.0] * 10)).psi == 0.0
    moved = numeric_psi(constant, pd.Series([5.0] * 5 + [6.0] * 5))
    assert shares(moved) == {"(-inf, 5]": (1.0, 0.5), "(5, inf)": (0.0, 0.5), "missing": (0.0, 0.0)}
    assert moved.psi == pytest.approx(term(0.5, 1.0) + term(0.5, 0.0), rel=1e-12)

    empty = numeric_psi(constant, pd.Series([], dtype=float))
    assert math.isnan(empty.psi) and empty.current_rows == 0 and empty.status() == "no_data"


def test_categorical_psi_unseen_and_missing_by_hand():
    reference = pd.Series(["a"] * 50 + ["b"] * 30 + [None] * 20, name="plan")
    current = pd.Series(["a"] * 40 + ["c"] * 30 + [np.nan] * 30)
    drift = categorical_psi(reference, current)
    assert shares(drift) == {"a": (0.5, 0.4), "b": (0.3, 0.0), "missing": (0.2, 0.3), "unseen": (0.0, 0.3)}
    expected = term(0.4, 0.5) + term(0.0, 0.3) + term(0.3, 0.2) + term(0.3, 0.0)
    assert drift.psi == pytest.approx(expected, rel=1e-12)
    assert drift.psi == pytest.approx(4.8651, abs=1e-4)
    assert (drift.kind, drift.missing_rate_reference, drift.missing_rate_current) == ("categorical", 0.2, 0.3)


def test_target_drift_reports_churn_rate_change():
    drift = target_drift([0] * 80 + [1] * 20, [0] * 60 + [1] * 30 + [None] * 10)
    assert shares(drift) == {"0": (0.8, 0.6), "1": (0.2, 0.3), "missing": (0.0, 0.1)}
    assert drift.psi == pytest.approx(term(0.6, 0.8) + term(0.3, 0.2) + term(0.1, 0.0), rel=1e-12)
    assert drift.details["reference_rate"] == pytest.approx(0.2)
    assert drift.details["current_rate"] == pytest.approx(30 / 90)
    assert drift.details["rate_change"] == pytest.approx(30 / 90 - 0.2)
    with pytest.raises(ValueError):
        target_drift([0, 1, 2], [0, 1])


def test_status_thresholds_and_summary():
    def drift(name: str, psi: float) -> FeatureDrift:
        return FeatureDrift(name, "numeric", psi, 0.0, 0.0, 10, 10)

    assert [drift("x", p).status() for p in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == \
        ["stable", "stable", "watch", "watch", "act", "act"]
    assert drift("x", 0.2).status(watch=0.3, act=0.5) == "stable"
    summary = drift_summary([drift("a", 0.05), drift("b", 0.3), drift("c", math.nan), drift("d", 0.12)],
                            DriftThresholds(watch=0.1, act=0.25), top=2)
    assert summary["counts"] == {"no_data": 1, "stable": 1, "watch": 1, "act": 1}
    assert summary["status"] == "act" and summary["max_psi"] == 0.3
    assert [t["feature"] for t in summary["top"]] == ["b", "d"]
    with pytest.raises(ValueError):
        DriftThresholds(watch=0.3, act=0.2)


# --- PSI on simulated data ------------------------------------------------------------------

def simulated(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = pd.DataFrame({f"x{i}": rng.normal(10 * i, 1 + i, n) for i in range(5)})
    frame["plan"] = rng.choice(["basic", "pro", "enterprise"], n, p=[0.6, 0.3, 0.1])
    frame["country"] = rng.choice(["us", "uk", "de", "fr"], n, p=[0.4, 0.3, 0.2, 0.1])
    return frame


NUMERIC, CATEGORICAL = [f"x{i}" for i in range(5)], ["plan", "country"]


def test_same_distribution_gives_near_zero_psi():
    rng = np.random.default_rng(1)
    reference, current = simulated(rng, 20_000), simulated(rng, 20_000)
    drifts = feature_drift(reference, current, NUMERIC, CATEGORICAL)
    assert len(drifts) == 7
    assert max(d.psi for d in drifts) < 0.01
    assert prediction_drift(reference["x0"] / 100, current["x0"] / 100).psi < 0.01


def test_one_std_shift_ranks_first_and_others_stay_stable():
    rng = np.random.default_rng(2)
    reference, current = simulated(rng, 20_000), simulated(rng, 20_000)
    current["x3"] += reference["x3"].std()
    drifts = feature_drift(reference, current, NUMERIC, CATEGORICAL)
    assert drifts[0].feature == "x3" and drifts[0].psi > 0.25 and drifts[0].status() == "act"
    assert all(d.psi < 0.1 for d in drifts[1:])
    assert [d.psi for d in drifts] == sorted((d.psi for d in drifts), reverse=True)
    with pytest.raises(KeyError):
        feature_drift(reference, current.drop(columns="x1"), NUMERIC, CATEGORICAL)


def test_prediction_drift_sees_shifted_scores():
    rng = np.random.default_rng(3)
    reference = rng.beta(2, 8, 5000)
    drift = prediction_drift(reference, np.clip(reference + 0.15, 0, 1))
    assert drift.kind == "prediction" and drift.feature == "prediction" and drift.psi > 0.25


# --- plots ----------------------------------------------------------------------------------

def assert_png(png: bytes) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Something was drawn: not a single flat colour.
    assert pixels[..., :3].std() > 0.01


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    challenger = np.clip(0.3 * y + rng.uniform(0, 0.7, 400), 0, 1)
    champion = np.clip(0.2 * y + rng.uniform(0, 0.8, 400), 0, 1)
    return y, challenger, champion


def test_roc_pr_and_reliability_render_with_and_without_champion(scored):
    y, challenger, champion = scored
    for png in (plots.roc_pr_curves(y, challenger, champion), plots.roc_pr_curves(y, challenger),
                plots.roc_pr_curves(np.zeros(10), np.linspace(0, 1, 10)),
                plots.reliability_diagram(y, challenger, champion), plots.reliability_diagram(y, challenger, n_bins=5)):
        assert_png(png)


def test_confusion_importance_and_drift_plots_render(scored):
    y, challenger, _ = scored
    assert_png(plots.confusion_matrix_plot(y, challenger, 0.5))
    assert_png(plots.feature_importance_plot([(f"feature_{i}", 0.1 / (i + 1), 0.01) for i in range(20)]))
    assert_png(plots.feature_importance_plot([]))
    drifts = [FeatureDrift(f"x{i}", "numeric", psi, 0.0, 0.0, 10, 10)
              for i, psi in enumerate([0.02, 0.15, 0.4, math.nan])]
    assert_png(plots.drift_bars(drifts))
    assert_png(plots.drift_bars([], watch=0.2, act=0.3))


def test_trend_plots_render_with_refused_challengers():
    points = [
        {"version": "v0001", "roc_auc": 0.80, "role": "champion", "deployed": True, "champion_roc_auc": None},
        {"version": "v0002", "roc_auc": 0.79, "role": "challenger", "deployed": False, "champion_roc_auc": 0.805},
        {"version": "v0003", "roc_auc": 0.82, "role": "challenger", "deployed": True, "champion_roc_auc": 0.80},
        {"version": "v0004", "roc_auc": 0.70, "role": "challenger", "deployed": False, "champion_roc_auc": 0.821},
    ]
    assert_png(plots.metric_trend(points))
    assert_png(plots.metric_trend(points[:1]))
    assert_png(plots.metric_trend([]))
    weeks = [
        {"week": "2026-05-04", "version": "v0001", "realized_roc_auc": 0.79, "deploy_roc_auc": 0.80},
        {"week": "2026-05-11", "version": "v0001", "realized_roc_auc": 0.76, "deploy_roc_auc": 0.80,
         "estimated_roc_auc": 0.77, "estimated_low": 0.74, "estimated_high": 0.80},
        {"week": "2026-05-18", "version": "v0003", "realized_roc_auc": None, "deploy_roc_auc": 0.82,
         "estimated_roc_auc": 0.81, "estimated_low": 0.78, "estimated_high": 0.84},
    ]
    assert_png(plots.realized_performance_trend(weeks))
    assert_png(plots.realized_performance_trend(weeks[:1]))


def test_png_markdown_embeds_the_bytes():
    png = plots.feature_importance_plot([("a", 1.0, 0.1)])
    markdown = plots.png_markdown(png, "importance")
    assert markdown.startswith("![importance](data:image/png;base64,iVBORw0KGgo") and markdown.endswith(")")


# --- permutation importance -----------------------------------------------------------------

def test_permutation_importance_ranks_informative_raw_features_above_noise():
    rng = np.random.default_rng(5)
    n = 3000
    records = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n),
                            "plan": rng.choice(["basic", "pro", "enterprise"], n),
                            "region": rng.choice(["north", "south"], n)})
    logit = 2.0 * records["signal"] + np.where(records["plan"] == "basic", 1.5, -1.0)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    model = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["signal", "noise"]),
                           ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"])]),
        LogisticRegression(max_iter=200),
    ).fit(records, y)
    features = ["signal", "noise", "plan", "region"]
    result = permutation_importance_raw(model.predict_proba, records, y, features, n_repeats=3, max_rows=2000)
    ranked = {name: (mean, std) for name, mean, std in result}
    assert set(ranked) == set(features)  # raw columns, not one-hot indicators
    assert [name for name, _, _ in result][:2] == ["signal", "plan"]
    assert ranked["signal"][0] > 0.1 and ranked["plan"][0] > 0.03
    assert abs(ranked["noise"][0]) < 0.01 and abs(ranked["region"][0]) < 0.01
    assert [mean for _, mean, _ in result] == sorted((mean for _, mean, _ in result), reverse=True)
    # Same seed, same numbers; and a (n,)-shaped scorer output is accepted.
    again = permutation_importance_raw(lambda f: model.predict_proba(f)[:, 1], records, y, features,
                                       n_repeats=3, max_rows=2000)
    assert again == result


# --- model card -----------------------------------------------------------------------------

FULL_CARD = {
    "version": "v0007", "model_family": "gradient_boosting", "threshold": 0.31,
    "feature_spec": {"name": "simulator", "id_column": "customer_id", "timestamp_column": "snapshot_date",
                     "target_column": "churned_within_28d", "positive_label": "1",
                     "numeric_features": ["tenure_days", "monthly_spend"], "categorical_features": ["plan"],
                     "label_horizon_days": 28},
    "data_window": {"train": {"start": "2026-01-05", "end": "2026-03-30"}, "validation": ["2026-04-06", "2026-04-13"],
                    "holdout": "2026-04-20..2026-04-27", "as_of": "2026-05-25", "label_cutoff": "2026-04-27"},
    "holdout_rows": 4210,
    "metrics": {"roc_auc": 0.8312, "pr_auc": 0.5104, "brier_score": 0.1012},
    "champion_metrics": {"roc_auc": 0.8201, "pr_auc": 0.4987, "brier_score": 0.1043},
    "champion_version": "v0005",
    "comparisons": [{"metric": "roc_auc", "difference": 0.0111, "ci_low": 0.0032, "ci_high": 0.0190,
                     "method": "paired bootstrap"}],
    "gate": {"passed": True, "bootstrap": False, "outcomes": [
        {"metric": "roc_auc", "challenger": 0.8312, "champion": 0.8201, "floor": 0.7, "max_regression": 0.005,
         "passed": True, "reason": "above floor | no regression"}]},
    "drift": [{"feature": f"f{i}", "psi": i / 100, "status": "stable"} for i in range(12)],
    "plots": {"roc_pr": "v0007_roc_pr.png", "reliability": "v0007_reliability.png"},
    "registered_at": "2026-05-25T06:00:00Z", "run_id": "abc123", "code_version": "deadbeef",
}


def test_model_card_renders_every_section_from_a_full_dict():
    card = render_model_card(FULL_CARD)
    headings = ["# Model card: churn model v0007", "## Intended use", "## Data", "## Metrics", "## Gate verdict",
                "## Drift at training time", "## Plots", "## Provenance"]
    positions = [card.index(h) for h in headings]
    assert positions == sorted(positions)
    assert "holdout ROC AUC 0.8312 (champion v0005: 0.8201)" in card
    assert "| roc_auc | 0.8312 | 0.8201 | +0.0111 | [+0.0032, +0.0190] (paired bootstrap) |" in card
    assert "| brier_score (lower is better) | 0.1012 | 0.1043 | -0.0031 |" in card
    assert "**PASSED**" in card and "above floor \\| no regression" in card
    assert "| f11 | 0.1100 | stable |" in card and "| f2 |" in card and "| f1 |" not in card  # top 10 only
    assert "![roc pr](v0007_roc_pr.png)" in card
    assert "2026-01-05 → 2026-03-30" in card and "2026-04-06 → 2026-04-13" in card
    assert "Label horizon: 28 days" in card and "Holdout rows: 4,210" in card
    assert "| code version | deadbeef |" in card
    assert "## Intended use\n\nNot recorded for this version: set `[model_card] intended_use`" in card


def test_model_card_minimal_and_partial_dicts_do_not_crash():
    card = render_model_card({"version": "v0001"})
    assert card.startswith("# Model card: churn model v0001")
    for heading in ("## Intended use", "## Data", "## Metrics", "## Gate verdict", "## Plots", "## Provenance"):
        assert heading in card
    assert "Not recorded for this version" in card and "_not recorded_" in card
    bootstrap = render_model_card({"version": "v0002", "metrics": {"roc_auc": 0.8}, "champion_metrics": None,
                                   "gate": {"passed": False, "bootstrap": True, "outcomes": []}, "comparisons": None})
    assert "No champion to compare with" in bootstrap and "**REFUSED**" in bootstrap


def test_drift_reads_categories_as_the_model_does():
    """An export that starts writing "CC" for "Credit Card" changes no model input: its PSI
    is 0. A category the model has never seen is still a shift."""
    from churn_assets.core.spec import load_spec
    from churn_assets.health.drift import feature_drift

    spec = load_spec("simulator")
    reference = pd.DataFrame({"payment_method": ["Credit Card"] * 600 + ["PayPal"] * 400})
    renamed = pd.DataFrame({"payment_method": ["CC"] * 600 + ["pay pal"] * 400})
    (drift,) = feature_drift(reference, renamed, [], ["payment_method"], category_aliases=spec.category_aliases)
    assert drift.psi == pytest.approx(0.0, abs=1e-9)
    (raw,) = feature_drift(reference, renamed, [], ["payment_method"])
    assert raw.psi > 0.25  # what comparing raw spellings used to report
    new = pd.DataFrame({"payment_method": ["CC"] * 400 + ["crypto"] * 600})
    (moved,) = feature_drift(reference, new, [], ["payment_method"], category_aliases=spec.category_aliases)
    assert moved.psi > 0.25
