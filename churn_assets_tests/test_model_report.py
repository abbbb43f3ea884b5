"""Model health in the graph: paired comparisons with intervals, plots, model cards, refused candidates."""

from __future__ import annotations

import base64
import json
import re

import dagster as dg
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_assets.core.spec import LABEL
from churn_assets.defs.reporting import registry_history, trend_points
from churn_assets.storage.candidates import CandidateLog
from churn_assets.storage.registry import ModelRegistry

from churn_assets_tests.conftest import (metadata_of, production_version, run_graph,
                                         simulator, with_shuffled_labels)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("roc_pr", "reliability", "confusion_matrix", "feature_importance", "roc_auc_trend")


def inline_pngs(markdown: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)]


def test_evaluation_report_has_paired_comparisons_with_intervals(two_runs):
    _, first, second = two_runs
    assert metadata_of(first, "evaluation_report").get("1_roc_auc_delta") is None  # bootstrap: nothing to pair
    meta = metadata_of(second, "evaluation_report")
    comparisons = meta["comparisons"]
    assert set(comparisons) == {"roc_auc", "pr_auc", "brier_score", "brier_skill", "log_loss", "ece"}
    # Grouped by customer: most customers appear in both holdout weeks.
    assert comparisons["roc_auc"]["method"] == "DeLong, grouped"
    assert all("1000 resamples of customers" in comparisons[m]["method"]
               for m in ("pr_auc", "brier_score", "brier_skill", "log_loss", "ece"))
    metrics = meta["metrics"]
    for name, c in comparisons.items():
        assert c["ci_low"] < c["difference"] < c["ci_high"], (name, c)
        assert c["difference"] == pytest.approx(metrics["challenger"][name] - metrics["champion"][name], abs=2e-4)
    # One float per gate metric for the UI's charts, consistent with the stored comparison.
    for rank, name in enumerate(("roc_auc", "pr_auc", "brier_skill", "ece"), start=1):
        assert meta[f"{rank}_{name}_delta"] == comparisons[name]["difference"]
        assert meta[f"{rank}_{name}"] == metrics["challenger"][name]
        assert meta[f"{rank}_{name}_champion"] == metrics["champion"][name]
    # The DeLong point estimates are the AUCs of the two models on the very same holdout.
    assert comparisons["roc_auc"]["challenger"] == pytest.approx(meta["1_roc_auc"], abs=1e-4)
    assert comparisons["roc_auc"]["champion"] == pytest.approx(meta["1_roc_auc_champion"], abs=1e-4)
    assert isinstance(meta["4_ece"], float) and isinstance(meta["4_ece_champion"], float)
    assert "95% CI of delta" in meta["comparison"]


def test_every_plot_is_a_valid_png_in_the_metadata(two_runs):
    _, _, second = two_runs
    meta = metadata_of(second, "evaluation_report")
    for name in PLOTS:
        pngs = inline_pngs(meta[f"plot_{name}"])
        assert len(pngs) == 1 and pngs[0].startswith(PNG_SIGNATURE), name
        assert len(pngs[0]) > 5000, name  # a drawn chart, not an empty canvas
    assert "sessions_last_30d" in meta["top_features"]  # the simulator's strongest churn driver


def test_card_and_plots_are_saved_beside_the_version(two_runs):
    home, _, second = two_runs
    registry = ModelRegistry(home / "registry")
    v2 = registry.get("v0002")
    for name in PLOTS:
        assert (v2.path / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    card = (v2.path / "card.md").read_text()
    manifest = v2.manifest
    assert card.startswith("# Model card: churn model v0002")
    for heading in ("## Intended use", "## Data", "## Metrics", "## Gate verdict", "## Drift at training time",
                    "## Plots"):
        assert heading in card
    roc = manifest["comparisons"]["roc_auc"]
    # Challenger and champion on the same row, with the DeLong interval of the difference.
    row = (f"| roc_auc | {manifest['metrics']['roc_auc']:.4f} | {manifest['champion_metrics']['roc_auc']:.4f}"
           f" | {roc['difference']:+.4f} | [{roc['ci_low']:+.4f}, {roc['ci_high']:+.4f}] (DeLong, grouped) |")
    assert row in card
    assert "Label horizon: 28 days" in card and "**PASSED**" in card
    # The intended use comes from the settings (here the simulator spec's default).
    assert "## Intended use\n\nWeekly churn-risk scoring of active customers of an e-commerce SaaS" in card
    assert "![roc auc trend](roc_auc_trend.png)" in card
    assert (registry.get("v0001").path / "card.md").read_text().count("bootstrap") >= 1
    deployed = metadata_of(second, "deployed_model")
    assert deployed["card_path"] == str(v2.path / "card.md")
    assert len(inline_pngs(deployed["model_card"])) == len(PLOTS)


def test_refused_challenger_is_recorded_as_a_candidate(two_runs, tmp_path):
    import shutil

    source_home, _, _ = two_runs
    home = tmp_path / "home"
    shutil.copytree(source_home, home)  # v0002 in production; this test may not change the shared one
    registry = ModelRegistry(home / "registry")
    blocked = run_graph(home, simulator("2026-05-18"), assets=with_shuffled_labels())
    assert not blocked.success
    assert production_version(home) == "v0002"
    entries = CandidateLog(registry.root).read().entries
    assert [e["recorded_by"] for e in entries] == ["deployment_gate"]
    entry = entries[0]
    assert entry["run_id"] == blocked.run_id and entry["champion_version"] == "v0002"
    assert entry["gate"]["passed"] is False and "roc_auc" in entry["verdict"]
    assert entry["comparisons"]["roc_auc"]["ci_high"] < 0  # clearly worse than the champion
    # deployed_model alone (no blocking check in the run) refuses and records it too.
    alone = run_graph(home, simulator("2026-05-18"), assets=with_shuffled_labels(),
                      selection=dg.AssetSelection.assets("deployed_model"))
    assert not alone.success
    entries = CandidateLog(registry.root).read().entries
    assert [e["recorded_by"] for e in entries] == ["deployment_gate", "deployed_model"]
    history = registry_history(registry)
    assert [c["run_id"] for c in history["candidates"]] == [blocked.run_id, alone.run_id]
    assert history["candidates"][0]["failed_rules"][0].startswith("roc_auc:")
    points = trend_points(registry)
    assert [p["deployed"] for p in points] == [True, True, False, False]
    assert points[2]["roc_auc"] == pytest.approx(entry["metrics"]["roc_auc"])


def test_candidate_log_survives_a_corrupt_line_and_reports_it(tmp_path):
    log = CandidateLog(tmp_path)
    log.record({"run_id": "r1", "challenger_fingerprint": "a", "metrics": {"roc_auc": float("nan")}})
    with open(log.path, "ab") as fh:
        fh.write(b'{"run_id": "torn", "metr\n\xff\xfe not json\n')
    log.record({"run_id": "r2", "challenger_fingerprint": "b"})
    log.record({"run_id": "r2", "challenger_fingerprint": "b"})  # the same refusal recorded twice
    read = log.read()
    assert [e["run_id"] for e in read.entries] == ["r1", "r2"]
    assert read.entries[0]["metrics"]["roc_auc"] is None  # NaN is not JSON; stored as null
    assert len(read.problems) == 2 and ":2:" in read.problems[0] and ":3:" in read.problems[1]
    assert json.loads(log.path.read_bytes().splitlines()[-1])["run_id"] == "r2"  # appended after the damage
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_paired_comparison_matches_an_independent_auc(two_runs):
    home, _, second = two_runs
    report = second.output_for_node("evaluation_report")
    registry = ModelRegistry(home / "registry")
    holdout = second.output_for_node("clean_features").holdout
    y = holdout[LABEL].to_numpy().astype(int)
    champion = registry.load(registry.get("v0001"))
    # The champion's evaluated fit is what is compared (its deployed fit learned weeks up
    # to a week before this holdout's end), on every holdout row: all are clear of it.
    assert champion.evaluated is not None and report.compared_rows == len(holdout)
    expected = roc_auc_score(y, champion.evaluated_fit.predict_proba(holdout))
    assert report.comparisons["roc_auc"]["champion"] == pytest.approx(expected, abs=1e-12)
    served = roc_auc_score(y, champion.predict_proba(holdout))
    assert served != pytest.approx(expected, abs=1e-6)
    assert set(report.plots) == set(PLOTS) and all(p.startswith(PNG_SIGNATURE) for p in report.plots.values())
    assert np.isfinite(report.comparisons["pr_auc"]["p_value"])
