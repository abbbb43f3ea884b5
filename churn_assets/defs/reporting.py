"""Model health for the Dagster layer and the CLI: comparisons, plots, the trend, the card.

Pure functions over numpy arrays, the registry and the candidate log; nothing here
imports Dagster, so ``churn-assets card`` and ``versions`` start quickly.
"""

from __future__ import annotations

import base64
import math
import re
from numbers import Integral, Real
from pathlib import Path

import pandas as pd

from churn_assets.core.gate import GateVerdict, evaluate_gate
from churn_assets.core.markdown import md_table
from churn_assets.core.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from churn_assets.defs.history_text import history_rows
from churn_assets.health import plots as health_plots
from churn_assets.health.card import render_model_card
from churn_assets.health.gate_words import refused_rules
from churn_assets.health.importance import permutation_importance_raw
from churn_assets.serving.fast_path import batch_scorer
from churn_assets.storage.atomic import atomic_write_bytes
from churn_assets.storage.candidates import CandidateLog
from churn_assets.storage.pointer import pin_of, production_status
from churn_assets.storage.registry import ModelRegistry, ModelVersion, RegistryError

# Permutation importance costs features x repeats predictions: a few thousand rows and
# three repeats keep it near a second while ranking the features stably.
IMPORTANCE_ROWS, IMPORTANCE_REPEATS, IMPORTANCE_TOP = 3000, 3, 15
PLOT_FILES = {"roc_pr": "roc_pr.png", "reliability": "reliability.png",
              "confusion_matrix": "confusion_matrix.png", "feature_importance": "feature_importance.png",
              "roc_auc_trend": "roc_auc_trend.png"}
CARD_FILE = "card.md"


def gate_verdict(report, rules) -> GateVerdict:
    """The gate's verdict on an ``EvaluationReport`` under ``rules`` (``GateRule``s)."""
    return evaluate_gate(report.challenger, report.champion, tuple(rules),
                         comparisons=report.comparisons or None, best_recent=report.best_recent,
                         champion_version=report.champion_version)


def calibration_rows(calibration: dict) -> list[dict]:
    """ECE of each model beside what a perfectly calibrated model shows on as many rows."""
    rows = []
    for who in ("challenger", "champion"):
        ece = calibration.get(f"{who}_ece")
        if ece is None:
            continue
        mean, p95 = calibration.get(f"{who}_ece_noise_mean"), calibration.get(f"{who}_ece_noise_p95")
        verdict = "-" if not (_finite(ece) and _finite(p95)) else (
            "within noise" if ece <= p95 else "above noise: miscalibrated")
        rows.append({"model": who, "ECE": _round(ece), "calibrated model would show (mean)": _round(mean),
                     "95th percentile": _round(p95), "verdict": verdict})
    return rows


def _round(value, digits: int = 4):
    return round(float(value), digits) if _finite(value) else "-"


def importance_rows(predictor, holdout: pd.DataFrame, y_true, seed: int = 0) -> list[tuple[str, float, float]]:
    """Raw-feature permutation importance on the holdout (ROC AUC drop); empty when undefined.

    Scored by the serving fast path (what production answers with, equal to the pipeline
    within 1e-9): the pandas pipeline spent ~30 ms per call on its own overhead, 1.3 s of
    the 43 calls at 3,000 rows."""
    try:
        return permutation_importance_raw(batch_scorer(predictor), holdout, y_true, predictor.spec.feature_columns,
                                          n_repeats=IMPORTANCE_REPEATS, seed=seed, max_rows=IMPORTANCE_ROWS)
    except ValueError:  # one class on the holdout: no ranking to lose
        return []


def evaluation_plots(y_true, proba_challenger, proba_champion, threshold: float,
                     importance: list, trend: list[dict]) -> dict[str, bytes]:
    """Every diagnostic PNG of one evaluation, by the names in ``PLOT_FILES``."""
    return {
        "roc_pr": health_plots.roc_pr_curves(y_true, proba_challenger, proba_champion),
        "reliability": health_plots.reliability_diagram(y_true, proba_challenger, proba_champion),
        "confusion_matrix": health_plots.confusion_matrix_plot(y_true, proba_challenger, threshold),
        "feature_importance": health_plots.feature_importance_plot(importance, top=IMPORTANCE_TOP),
        "roc_auc_trend": health_plots.metric_trend(trend),
    }


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def _as_of(entry: dict) -> str | None:
    return (entry.get("data_window") or {}).get("as_of")


def trend_points(registry: ModelRegistry, current: dict | None = None, production: str | None = None) -> list[dict]:
    """ROC AUC by model version for ``plots.metric_trend``, oldest first.

    Registered versions (promoted) and refused or held candidates are merged by the time
    they were recorded; ``current`` (a point for this run's challenger) goes last. Each
    point has its data's ``as_of``; the version in production (the pointer's, or
    ``production`` when the caller is about to move it) is marked ``production``, and a
    rollback (events.jsonl) is noted as ``rollbacks`` on the last point recorded before it.
    """
    if production is None:
        try:
            production = (registry.production_pointer() or {}).get("version")
        except RegistryError:
            production = None
    timed = []
    for v in registry.versions():
        m = v.manifest
        timed.append((str(m.get("registered_at", "")), {
            "version": v.version, "roc_auc": _number((m.get("metrics") or {}).get("roc_auc")),
            "champion_roc_auc": (m.get("champion_metrics") or {}).get("roc_auc"), "deployed": True,
            "as_of": _as_of(m), "production": v.version == production}))
    for c in CandidateLog(registry.root).read().entries:
        timed.append((str(c.get("recorded_at", "")), {
            "version": f"run {str(c.get('run_id') or '?')[:6]}",
            "roc_auc": _number((c.get("metrics") or {}).get("roc_auc")),
            "champion_roc_auc": (c.get("champion_metrics") or {}).get("roc_auc"), "deployed": False,
            "held": bool(c.get("held")), "as_of": _as_of(c), "production": False}))
    points = [p for _, p in sorted(timed, key=lambda t: t[0])]
    times = sorted(t for t, _ in timed)
    for e in registry.events():
        if not str(e.get("reason") or "").startswith("rollback from"):
            continue
        before = [i for i, t in enumerate(times) if t <= str(e.get("promoted_at", ""))]
        if before:
            points[before[-1]].setdefault("rollbacks", []).append(str(e.get("version")))
    return points + ([current] if current else [])


# The metrics the default gate judges, then calibration: the only plain floats of
# evaluation_report, so the UI's Plots tab (charts ordered by key) shows these first.
CHARTED_METRICS = ("roc_auc", "pr_auc", "brier_skill", "ece")
DIGITS = 4


def rounded(value, digits: int = DIGITS):
    """``value`` with every float rounded to ``digits`` decimals, inside dicts, lists and
    tuples too (tuples become lists, as in JSON); NaN and infinities are left as they are."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) or (isinstance(value, Real) and not isinstance(value, Integral)):
        value = float(value)
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def metric_metadata(challenger: dict, champion: dict | None, comparisons: dict) -> dict[str, float]:
    """One float per charted metric (``CHARTED_METRICS``): the challenger's, the
    champion's and the delta, keyed "1_roc_auc", "1_roc_auc_champion", "1_roc_auc_delta",
    "2_pr_auc", ... so the UI charts them in the gate's order. Rounded; the intervals
    and the other metrics stay in the tables and the ``comparisons`` JSON."""
    out = {}
    for rank, name in enumerate(CHARTED_METRICS, start=1):
        if name not in challenger:
            continue
        out[f"{rank}_{name}"] = _number(challenger[name])
        if champion is not None and name in champion:
            out[f"{rank}_{name}_champion"] = _number(champion[name])
            difference = (comparisons.get(name) or {}).get("difference")
            out[f"{rank}_{name}_delta"] = (_number(difference) if difference is not None
                                           else _number(challenger[name]) - _number(champion[name]))
    return rounded(out)


def summary_line(family: str, prospective: str, champion_version: str | None, verdict: GateVerdict,
                 comparisons: dict | None = None, best_recent: dict | None = None,
                 held: bool = False, identical: bool = False) -> str:
    """evaluation_report's first line: "challenger gradient_boosting (would be v0004) vs
    champion v0002 in production: passes the gate", or "...: refused: <each failed rule in
    words>". ``held``: production is pinned, so a passing challenger is not promoted;
    ``identical``: it is the production model again (same data, config, code)."""
    champion = f"champion {champion_version} in production" if champion_version else "champion none (bootstrap)"
    if verdict.passed:
        words = "passes the gate"
        if identical:
            words += f"; identical to {champion_version}, so no new version"
        elif held:
            words += f"; held: {champion_version} is pinned in production (`churn-assets unpin`)"
    else:
        rules = refused_rules(verdict.to_dict(), comparisons, best_recent) or ["a gate rule failed"]
        words = "refused: " + "; ".join(rules)
    would_be = f" (would be {prospective})" if verdict.passed and not held and not identical else (
        f" (would have been {prospective})")
    return f"challenger {family}{would_be} vs {champion}: {words}"


def comparison_rows(challenger: dict, champion: dict | None, comparisons: dict) -> list[dict]:
    """Table rows: both models on the same holdout, the delta and its 95% interval."""
    rows = []
    for name, value in challenger.items():
        old = None if champion is None else champion.get(name, math.nan)
        delta = None if old is None else value - old
        c = comparisons.get(name) or {}
        ci = (f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
              if _finite(c.get("ci_low")) and _finite(c.get("ci_high")) else "-")
        better = None if delta is None or math.isnan(delta) else (
            delta >= 0 if name in HIGHER_IS_BETTER else delta <= 0)
        rows.append({"metric": name, "challenger": _round(value), "champion": "-" if old is None else _round(old),
                     "delta": "-" if delta is None else _round(delta), "95% CI of delta": ci,
                     "p": _round(c.get("p_value")),
                     "challenger better or equal": "-" if better is None else ("yes" if better else "no")})
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def inline_images(markdown: str, plots: dict[str, bytes]) -> str:
    """Replace ``![alt](name.png)`` links to ``plots`` files with inline data URIs
    (Dagster's UI cannot reach files beside the registry version)."""
    by_file = {PLOT_FILES.get(name, f"{name}.png"): png for name, png in plots.items()}

    def swap(match: re.Match) -> str:
        png = by_file.get(match.group(2))
        if png is None:
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", swap, markdown)


def _in_metric_order(metrics: dict) -> dict:
    # Manifests are written with sorted keys; the card lists metrics in the usual order.
    order = {name: i for i, name in enumerate(METRIC_NAMES + ("ece",))}
    return dict(sorted(metrics.items(), key=lambda kv: order.get(kv[0], len(order))))


def card_dict(version: ModelVersion, intended_use: str | None = None) -> dict:
    """The model card's input, from a version's manifest and the plot files beside it;
    ``intended_use`` from the settings (``Settings.intended_use()``)."""
    m = version.manifest
    calibration = m.get("calibration") or {}
    metrics = dict(m.get("metrics") or {})
    if "challenger_ece" in calibration:
        metrics.setdefault("ece", calibration["challenger_ece"])
    metrics = _in_metric_order(metrics)
    champion = m.get("champion_metrics")
    if champion is not None and "champion_ece" in calibration:
        champion = dict(champion, ece=calibration["champion_ece"])
    plots = {name: file for name, file in PLOT_FILES.items() if (version.path / file).exists()}
    return {"version": version.version, "model_family": m.get("model_family"), "threshold": m.get("threshold"),
            "feature_spec": m.get("feature_spec"), "data_window": m.get("data_window"),
            "holdout_rows": m.get("holdout_rows"), "metrics": metrics, "champion_metrics": champion,
            "champion_version": m.get("champion_version"),
            "comparisons": list((m.get("comparisons") or {}).values()), "gate": m.get("gate"),
            "calibration": calibration_rows(calibration),
            "drift": m.get("drift"), "plots": plots, "registered_at": m.get("registered_at"),
            "run_id": m.get("run_id"), "code_version": m.get("code_version"),
            "intended_use": intended_use or m.get("intended_use")}


def write_card(version: ModelVersion, plots: dict[str, bytes], intended_use: str | None = None) -> tuple[Path, str]:
    """Save ``plots`` and ``card.md`` into the version folder; returns (path, markdown).

    The PNGs go first, so the card only links files that exist. Both are written
    atomically: a reader of the folder never sees half a card.
    """
    for name, png in plots.items():
        atomic_write_bytes(version.path / PLOT_FILES.get(name, f"{name}.png"), png)
    markdown = render_model_card(card_dict(version, intended_use))
    path = version.path / CARD_FILE
    atomic_write_bytes(path, markdown.encode())
    return path, markdown


def card_text(version: ModelVersion, intended_use: str | None = None, status: str | None = None) -> str:
    """The stored card, or one rendered from the manifest (and ``intended_use``, the
    settings') for versions that predate cards; ``status`` (is it in production, is it
    pinned: ``pointer.production_status``) goes under the title, as it changes after
    the card was written."""
    path = version.path / CARD_FILE
    text = path.read_text() if path.exists() else render_model_card(card_dict(version, intended_use))
    if not status:
        return text
    title, _, rest = text.partition("\n")
    return f"{title}\n\n> {status}\n{rest}"


def production_card(registry: ModelRegistry, intended_use: str | None = None) -> tuple[str, str] | None:
    """(version, card markdown with its plots inlined) of the version production points
    at now, its status under the title; None before the first promotion."""
    pointer = registry.production_pointer()
    if not pointer:
        return None
    version = registry.get(pointer["version"])
    text = card_text(version, intended_use, production_status(pointer, version.version))
    return version.version, inline_images(text, stored_plots(version))


def production_pages(registry: ModelRegistry, intended_use: str | None = None) -> tuple[str, tuple[str, str] | None]:
    """What deployed_model shows, from a run or from the CLI: the registry's history as a
    markdown table, and ``production_card`` (None before the first promotion)."""
    return md_table(history_rows(registry_history(registry))), production_card(registry, intended_use)


def stored_plots(version: ModelVersion) -> dict[str, bytes]:
    """The plot PNGs saved beside a version, by name (for ``inline_images``)."""
    return {name: (version.path / file).read_bytes() for name, file in PLOT_FILES.items()
            if (version.path / file).exists()}


def _decision(m: dict) -> dict:
    """The comparison that decided a version or a candidate, as plain values."""
    metrics, champion = m.get("metrics") or {}, m.get("champion_metrics") or {}
    comparisons = m.get("comparisons") or {}
    roc = comparisons.get("roc_auc") or {}
    gate = m.get("gate") or {}
    failed = [f"{o.get('metric')}: {o.get('reason')}" for o in gate.get("outcomes") or [] if not o.get("passed")]
    return {"model_family": m.get("model_family"), "champion_version": m.get("champion_version"),
            "roc_auc": metrics.get("roc_auc"), "champion_roc_auc": champion.get("roc_auc"),
            "delta_roc_auc": roc.get("difference", (metrics["roc_auc"] - champion["roc_auc"])
                                     if _finite(metrics.get("roc_auc")) and _finite(champion.get("roc_auc"))
                                     else None),
            "ci_low": roc.get("ci_low"), "ci_high": roc.get("ci_high"),
            "gate_passed": gate.get("passed"), "bootstrap": gate.get("bootstrap"),
            "failed_rules": failed, "refused_in_words": refused_rules(gate, comparisons, m.get("best_recent")),
            "calibration": calibration_rows(m.get("calibration") or {}),
            "run_id": m.get("run_id"), "metrics": metrics,
            "champion_metrics": m.get("champion_metrics"), "comparisons": comparisons,
            "as_of": (m.get("data_window") or {}).get("as_of"),
            "roc_auc_se": (m.get("holdout_uncertainty") or {}).get("roc_auc_se")}


def registry_history(registry: ModelRegistry, risk_list: dict | None = None) -> dict:
    """Versions (with the comparison that decided each), the production pointer and its
    pin, every promotion, rollback and unpin (events.jsonl), challengers refused or held,
    and problems. ``risk_list``: what the caller knows of the risk list (state, stale)."""
    try:
        pointer = registry.production_pointer() or {}
    except RegistryError:
        pointer = {}  # a damaged pointer is among registry.problems(); list the versions anyway
    versions = [{"version": v.version, "production": v.version == pointer.get("version"),
                 "registered_at": v.manifest.get("registered_at"), "data_window": v.manifest.get("data_window"),
                 "card": str(v.path / CARD_FILE) if (v.path / CARD_FILE).exists() else None,
                 **_decision(v.manifest)} for v in registry.versions()]
    read = CandidateLog(registry.root).read()
    candidates = [{"recorded_at": c.get("recorded_at"), "recorded_by": c.get("recorded_by"),
                   "verdict": c.get("verdict"), "data_window": c.get("data_window"),
                   "held": bool(c.get("held")), **_decision(c)}
                  for c in read.entries]
    return {"registry": str(registry.root), "production": pointer.get("version"), "pointer": pointer or None,
            "pinned": pin_of(pointer), "versions": versions, "events": registry.events(),
            "candidates": candidates, "risk_list": risk_list, "problems": read.problems}
