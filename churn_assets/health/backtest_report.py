"""The backtest's result for people: a markdown report and its plots.

``replay`` (health/backtest.py) returns one JSON-ready dict; scripts read its keys:

- ``weeks``: one object per weekly ``as_of``: ``decision`` (``bootstrap``, ``deployed``,
  ``refused``, ``no_change``, or ``no_data`` before the history suffices),
  ``production_version`` (after the decision, gate policy), ``challenger_family``,
  ``holdout_roc_auc`` (the challenger's deploy-time holdout score), ``realized_roc_auc``
  (mean weekly ROC AUC of the production model over the following ``realized_weeks``
  weeks with final labels; null when none), ``estimated_roc_auc`` / ``estimate_low`` /
  ``estimate_high`` (the label-free estimate of the week it serves next, with its
  interval) and ``estimate_realized_roc_auc`` (that week's truth), ``policies`` (the
  same for each policy);
- ``versions``: every challenger with ``holdout_roc_auc``, ``realized_roc_auc``,
  ``evaluated_fit_realized_roc_auc`` (the fit the holdout scored, on the same weeks) and
  ``holdout_bias``;
- ``policies``: ``gate``, ``always_deploy``, ``never_retrain`` with
  ``mean_realized_roc_auc``, ``worst_week_roc_auc``, ``deploys``, ``decay_alarms`` and
  ``decay_alarms_per_model_year``;
- ``summary``: ``holdout_bias`` (per family: mean and max of holdout minus realized),
  ``estimate_coverage`` (share of estimated weeks whose truth fell in the interval),
  ``estimate_mae``, ``refit_gain`` (deployed fit minus evaluated fit, realized), and
  ``recovery`` (weeks to recover after a simulator scenario's start, per policy).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churn_assets.health.backtest import POLICIES
from churn_assets.health.plots import DPI, _png

POLICY_COLORS = {"gate": "tab:blue", "always_deploy": "tab:green", "never_retrain": "tab:grey"}
PLOT_FILES = {"realized_by_policy": "backtest_realized.png", "holdout_vs_realized": "backtest_versions.png",
              "estimate_vs_realized": "backtest_estimate.png"}


def _f(value, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _dates(rows: list[dict], key: str = "as_of") -> list[pd.Timestamp]:
    return [pd.Timestamp(r[key]) for r in rows]


def plots(result: dict) -> dict[str, bytes]:
    """The three plots of the report, PNG bytes by name (``PLOT_FILES``)."""
    weeks = [w for w in result["weeks"] if "policies" in w]
    out = {}
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for policy in POLICIES:
        values = [w["policies"][policy]["realized_roc_auc"] for w in weeks]
        ax.plot(_dates(weeks), [np.nan if v is None else v for v in values], marker="o", markersize=3,
                color=POLICY_COLORS[policy], label=policy.replace("_", " "))
    refused = [w for w in weeks if w["decision"] == "refused"]
    if refused:
        ax.scatter(_dates(refused), [w["policies"]["gate"]["realized_roc_auc"] or np.nan for w in refused],
                   marker="x", color="tab:red", zorder=3, label="gate refused")
    event = (result.get("plan") or {}).get("event_date")
    if event:
        ax.axvline(pd.Timestamp(event), color="tab:red", linestyle=":", linewidth=1, label="scenario starts")
    ax.set(title="Realized ROC AUC over the next weeks, by policy", xlabel="decision week (as of)",
           ylabel="ROC AUC")
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    out["realized_by_policy"] = _png(fig)

    versions = [v for v in result["versions"] if v["realized_roc_auc"] is not None]
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.subplots()
    if versions:
        ax.plot(_dates(versions), [v["holdout_roc_auc"] for v in versions], marker="o", markersize=3,
                label="deploy-time holdout (evaluated fit)")
        ax.plot(_dates(versions), [v["realized_roc_auc"] for v in versions], marker="s", markersize=3,
                label="realized (deployed fit)")
    ax.set(title="Deploy-time holdout vs realized ROC AUC, per version", xlabel="version trained as of",
           ylabel="ROC AUC")
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    out["holdout_vs_realized"] = _png(fig)

    estimated = [w for w in weeks if w.get("estimated_roc_auc") is not None]
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    ax = fig.subplots()
    if estimated:
        x = _dates(estimated, "estimate_week")
        ax.fill_between(x, [w["estimate_low"] for w in estimated], [w["estimate_high"] for w in estimated],
                        alpha=0.25, label="estimate interval")
        ax.plot(x, [w["estimated_roc_auc"] for w in estimated], marker="o", markersize=3, label="estimate")
        truth = [np.nan if w.get("estimate_realized_roc_auc") is None else w["estimate_realized_roc_auc"]
                 for w in estimated]
        ax.plot(x, truth, marker="s", markersize=3, color="black", linestyle="none", label="realized")
    ax.set(title="Label-free estimate vs realized ROC AUC of the week served next", xlabel="week",
           ylabel="ROC AUC")
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    out["estimate_vs_realized"] = _png(fig)
    return out


def render_markdown(result: dict, images: dict[str, str]) -> str:
    """The report: summary, policies, bias per family, and the week table. ``images``:
    plot name -> markdown image target (a file name, or a data URI)."""
    s, plan = result["summary"], result["plan"]
    lines = [f"# Backtest {plan['from']} .. {plan['to']}", "",
             f"Families {', '.join(plan['families'])}; seed {plan['seed']}; each decision judged on the"
             f" {plan['realized_weeks']} following weeks once their labels are final; {s['seconds']} s.", ""]
    if plan.get("scenario"):
        lines += [f"Scenario: **{plan['scenario']}** from {plan.get('event_date')}.", ""]
    lines += ["## Policies", "", "| policy | mean realized ROC AUC | worst week | deploys | decay alarms"
              " (per model-year) |", "|---|---|---|---|---|"]
    for name, p in result["policies"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_f(p['mean_realized_roc_auc'])} | {_f(p['worst_week_roc_auc'])}"
                     f" | {p['deploys']} | {p['decay_alarms']} ({_f(p['decay_alarms_per_model_year'], 1)}) |")
    gate, always, never = (result["policies"][k]["mean_realized_roc_auc"] for k in POLICIES)
    if None not in (gate, always, never):
        lines += ["", f"Mean realized ROC AUC of the gate minus never retraining: {gate - never:+.4f};"
                      f" minus always deploying: {gate - always:+.4f}."]
    if s.get("recovery"):
        lines += ["", "## Recovery after the scenario", "", "| policy | baseline | weeks to recover |",
                  "|---|---|---|"]
        for name, r in s["recovery"].items():
            weeks = "not within the replay" if r["weeks_to_recover"] is None else r["weeks_to_recover"]
            lines.append(f"| {name.replace('_', ' ')} | {_f(r['baseline'])} | {weeks} |")
    lines += ["", "## Instruments", "", "| instrument | measured |", "|---|---|"]
    for family, b in s["holdout_bias"].items():
        lines.append(f"| holdout bias, {family} (holdout - realized) | mean {_f(b['mean'])}, max {_f(b['max'])}"
                     f" over {b['versions']} versions |")
    lines += [f"| estimate interval coverage | {_f(s['estimate_coverage'], 2)} of {s['estimated_weeks']} weeks |",
              f"| estimate mean absolute error | {_f(s['estimate_mae'])} |",
              f"| deployed fit minus evaluated fit, realized | {_f(s['refit_gain'])} |", ""]
    for name, title in (("realized_by_policy", "Realized ROC AUC by policy"),
                        ("holdout_vs_realized", "Deploy-time vs realized"),
                        ("estimate_vs_realized", "Estimate vs realized")):
        if name in images:
            lines += [f"![{title}]({images[name]})", ""]
    lines += ["## Weeks", "", "| as of | decision | production | family | holdout | realized | estimate"
              " [interval] | truth |", "|---|---|---|---|---|---|---|---|"]
    for w in result["weeks"]:
        if "policies" not in w:
            lines.append(f"| {w['as_of']} | {w['decision']} | - | - | - | - | - | - |")
            continue
        interval = ("-" if w.get("estimated_roc_auc") is None else
                    f"{_f(w['estimated_roc_auc'])} [{_f(w['estimate_low'])}, {_f(w['estimate_high'])}]")
        lines.append(f"| {w['as_of']} | {w['decision']} | {w['production_version'] or '-'} |"
                     f" {w['challenger_family']} | {_f(w['holdout_roc_auc'])} | {_f(w['realized_roc_auc'])} |"
                     f" {interval} | {_f(w.get('estimate_realized_roc_auc'))} |")
    return "\n".join(lines) + "\n"


__all__ = ["DPI", "PLOT_FILES", "plots", "render_markdown"]
