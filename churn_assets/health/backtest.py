"""Replay the weekly policy over past weeks and measure what each instrument promised.

For every weekly ``as_of`` between two dates, ``replay`` does what a refresh does, with
the same functions (``split_by_time``, ``fit_preprocessor``, ``train_challenger``,
``evaluate_holdout``, ``evaluate_gate``, the label-free estimate and the decay test of
``health.production``), on a history whose labels have since become final. Then it
looks ahead: the model each policy had in production after that week's decision is
scored on the following weeks once their labels are final. Three policies share the
week's trained challenger, so each week is trained once:

- ``gate``: the configured gate against the champion (and the best recent versions);
- ``always_deploy``: every challenger replaces production;
- ``never_retrain``: the first model stays.

Nothing is written anywhere: models live in memory, so a replay cannot touch a
registry, a history or a risk list.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from churn_assets.core.artifact import ChurnPredictor
from churn_assets.core.encoding import fit_preprocessor
from churn_assets.core.evaluation import contender, evaluate_holdout
from churn_assets.core.gate import DEFAULT_RULES, RECENT_VERSIONS, GateRule, evaluate_gate
from churn_assets.core.metrics import churn_metrics
from churn_assets.core.spec import LABEL, FeatureSpec
from churn_assets.core.training import (MODEL_FAMILIES, NotEnoughHistory, WindowPlan, prior_shift, split_by_time,
                                        train_challenger)
from churn_assets.health.production import calibration_verdict, decay_test, estimate_week, week_start

POLICIES = ("gate", "always_deploy", "never_retrain")
WEEK = pd.Timedelta(weeks=1)


@dataclass(frozen=True)
class BacktestPlan:
    """What to replay. ``start``/``end``: the first and last weekly ``as_of`` (inclusive);
    ``realized_weeks``: how many weeks after a decision its model is judged on."""

    start: pd.Timestamp
    end: pd.Timestamp
    families: tuple[str, ...] = MODEL_FAMILIES
    seed: int = 42
    window: WindowPlan = field(default_factory=WindowPlan)
    rules: tuple[GateRule, ...] = DEFAULT_RULES
    recent_versions: int = RECENT_VERSIONS
    realized_weeks: int = 4
    calibration: str = "auto"
    estimate_draws: int = 200
    max_auc_decay: float = 0.03
    decay_weeks: int = 4
    # A simulator scenario and the day it starts, to measure recovery from it.
    scenario: str | None = None
    event_date: pd.Timestamp | None = None
    # Move the served calibrator to the holdout's churn rate (core.training.prior_shift).
    prior_shift: bool = False

    def as_of_dates(self) -> list[pd.Timestamp]:
        start, end = pd.Timestamp(self.start).normalize(), pd.Timestamp(self.end).normalize()
        if end < start:
            raise ValueError(f"the backtest ends ({end.date()}) before it starts ({start.date()})")
        return list(pd.date_range(start, end, freq="7D"))


@dataclass
class _Version:
    name: str
    as_of: pd.Timestamp
    predictor: ChurnPredictor
    holdout_roc_auc: float
    holdout_se: float
    family: str


@dataclass
class _Policy:
    name: str
    production: _Version | None = None
    deployed: list[_Version] = field(default_factory=list)
    alarmed: set = field(default_factory=set)
    alarms: int = 0


class _Looker:
    """Scores models on snapshot weeks whose labels are final, each (model, week) once."""

    def __init__(self, records: pd.DataFrame, spec: FeatureSpec, data_as_of: pd.Timestamp):
        self.records, self.spec = records, spec
        self.weeks = week_start(records[spec.timestamp_column])
        self.index = self.weeks.groupby(self.weeks).indices
        # A week's labels are final when its last snapshot day is a label horizon old.
        self.final_until = pd.Timestamp(data_as_of).normalize() - pd.Timedelta(days=spec.label_horizon_days)
        self.cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rows(self, week: str) -> pd.DataFrame | None:
        index = self.index.get(week)
        if index is None:
            return None
        rows = self.records.iloc[index]
        return rows if rows[self.spec.timestamp_column].max() <= self.final_until else None

    def scored(self, name: str, model: ChurnPredictor, week: str):
        """(labels, probabilities, customer ids) of ``model`` on ``week``, None if not final."""
        key = (name, week)
        if key not in self.cache:
            rows = self.rows(week)
            self.cache[key] = None if rows is None else (
                rows[LABEL].to_numpy().astype(int), model.predict_proba(rows),
                rows[self.spec.id_column].to_numpy())
        return self.cache[key]

    def auc(self, name: str, model: ChurnPredictor, week: str) -> float | None:
        got = self.scored(name, model, week)
        if got is None or np.unique(got[0]).size < 2:
            return None
        return churn_metrics(got[0], got[1], model.threshold)["roc_auc"]

    def mean_auc(self, name: str, model: ChurnPredictor, weeks: list[str]) -> float | None:
        values = [v for v in (self.auc(name, model, w) for w in weeks) if v is not None]
        return float(np.mean(values)) if values else None


def _monday(day: pd.Timestamp) -> str:
    return str((day - pd.Timedelta(days=day.day_of_week)).date())


def replay(records: pd.DataFrame, spec: FeatureSpec, plan: BacktestPlan, data_as_of: pd.Timestamp,
           progress: Callable[[str], None] | None = None) -> dict:
    """The backtest of ``plan`` on validated ``records`` (with ``_label``) known on
    ``data_as_of`` (labels of snapshots up to ``data_as_of - horizon`` are final).

    Returns the JSON-ready result: ``weeks``, ``versions``, ``policies`` and ``summary``
    (``health.backtest_report`` describes every key).
    """
    say = progress or (lambda message: None)
    ts = spec.timestamp_column
    dates = pd.to_datetime(records[ts])
    looker = _Looker(records, spec, data_as_of)
    policies = {name: _Policy(name) for name in POLICIES}
    versions: list[_Version] = []
    weeks, version_rows, estimates = [], [], []
    served_by: dict[str, _Version] = {}  # week -> the gate policy's model that served it
    started = time.perf_counter()
    for as_of in plan.as_of_dates():
        tick = time.perf_counter()
        known = records[(dates <= as_of).to_numpy()]
        row = {"as_of": str(as_of.date())}
        try:
            frames = split_by_time(known, spec, plan.window, as_of)
        except NotEnoughHistory as exc:
            weeks.append({**row, "decision": "no_data", "reason": str(exc)})
            say(f"{as_of.date()}: not enough history ({exc})")
            continue
        preprocessor = fit_preprocessor(spec, [frames.train, frames.validation])
        predictor, _ = train_challenger(frames, spec, preprocessor, list(plan.families), plan.seed,
                                        "backtest", str(as_of.date()), calibration=plan.calibration)
        if plan.prior_shift:
            predictor, _ = prior_shift(predictor, frames.holdout)
        name = f"w{len(versions) + 1:03d}"
        gate_policy = policies["gate"]
        champion = (contender(gate_policy.production.name, gate_policy.production.predictor)
                    if gate_policy.production else None)
        recent = [contender(v.name, v.predictor) for v in gate_policy.deployed[-plan.recent_versions:]]
        measured = evaluate_holdout(frames.holdout, spec, predictor, champion, recent, seed=0)
        verdict = evaluate_gate(measured.challenger, measured.champion, plan.rules,
                                comparisons=measured.comparisons or None, best_recent=measured.best_recent,
                                champion_version=measured.champion_version)
        version = _Version(name, as_of, predictor, measured.challenger["roc_auc"],
                           measured.uncertainty.get("roc_auc_se", math.nan), predictor.family)
        versions.append(version)
        decision = ("bootstrap" if verdict.bootstrap and verdict.passed else
                    "deployed" if verdict.passed else "refused")
        if verdict.passed:
            _deploy(gate_policy, version)
        _deploy(policies["always_deploy"], version)
        if policies["never_retrain"].production is None:
            _deploy(policies["never_retrain"], version)
        ahead = [_monday(as_of + k * WEEK) for k in range(plan.realized_weeks)]
        production = gate_policy.production
        row.update({
            "decision": decision, "production_version": production.name if production else None,
            "challenger_version": name, "challenger_family": predictor.family,
            "calibration": predictor.validation_metrics.get("calibration"),
            "holdout_roc_auc": measured.challenger["roc_auc"],
            "champion_holdout_roc_auc": (measured.champion or {}).get("roc_auc"),
            "gate": verdict.summary,
            "realized_roc_auc": None if production is None else
            looker.mean_auc(production.name, production.predictor, ahead),
            "policies": {p.name: {"production_version": p.production.name if p.production else None,
                                  "realized_roc_auc": None if p.production is None else
                                  looker.mean_auc(p.production.name, p.production.predictor, ahead)}
                         for p in policies.values()},
        })
        # The label-free estimate of the week production serves next, as model_health
        # would publish it, and the truth once that week's labels are final.
        if production is not None:
            served_by[_monday(as_of)] = production
            estimate = _estimate(looker, known, spec, production, as_of, plan, estimates, served_by)
            row.update(estimate)
        for policy in policies.values():
            _decay_alarm(looker, policy, as_of, spec, plan)
        row["seconds"] = round(time.perf_counter() - tick, 1)
        weeks.append(row)
        say(f"{as_of.date()}: {decision} {name} ({predictor.family}), holdout ROC AUC"
            f" {measured.challenger['roc_auc']:.4f}; production {row['production_version']};"
            f" {row['seconds']} s")
    for version in versions:
        ahead = [_monday(version.as_of + k * WEEK) for k in range(plan.realized_weeks)]
        deployed = looker.mean_auc(version.name, version.predictor, ahead)
        evaluated = looker.mean_auc(version.name + ":evaluated", version.predictor.evaluated_fit, ahead)
        version_rows.append({
            "version": version.name, "as_of": str(version.as_of.date()), "family": version.family,
            "holdout_roc_auc": version.holdout_roc_auc, "realized_roc_auc": deployed,
            "evaluated_fit_realized_roc_auc": evaluated,
            "holdout_bias": None if deployed is None else version.holdout_roc_auc - deployed,
            "deployed_by_gate": any(version is v for v in policies["gate"].deployed)})
    return _result(plan, weeks, version_rows, policies, estimates, time.perf_counter() - started)


def _deploy(policy: _Policy, version: _Version) -> None:
    policy.production = version
    policy.deployed.append(version)


def _estimate(looker: _Looker, known: pd.DataFrame, spec: FeatureSpec, production: _Version,
              as_of: pd.Timestamp, plan: BacktestPlan, history: list[dict], served_by: dict) -> dict:
    week = _monday(as_of)
    rows = known[week_start(known[spec.timestamp_column]).to_numpy() == week]
    if rows.empty:
        return {}
    # Residuals of earlier estimates whose truth is known by now (labels final at as_of).
    cutoff = as_of - pd.Timedelta(days=spec.label_horizon_days)
    past = [h for h in history if pd.Timestamp(h["week"]) + pd.Timedelta(days=6) <= cutoff
            and h.get("realized") is not None]
    estimate = estimate_week(production.predictor, rows, n_draws=plan.estimate_draws, seed=0,
                             residuals=[(h["realized"] - h["estimated"], h["half_width"]) for h in past])
    # As model_health does: no trusted estimate while the newest matured week was served
    # miscalibrated beyond what chance explains (by whichever model served it).
    matured = [w for w in served_by if pd.Timestamp(w) + pd.Timedelta(days=6) <= cutoff]
    reliable = True
    if matured:
        newest = max(matured)
        got = looker.scored(served_by[newest].name, served_by[newest].predictor, newest)
        reliable = True if got is None else calibration_verdict(got[0], got[1])["reliable"]
    realized = looker.auc(production.name, production.predictor, week)
    scored = looker.scored(production.name, production.predictor, week)
    served = {} if scored is None else calibration_verdict(scored[0], scored[1])
    record = {"week": week, "estimated": estimate["roc_auc"], "realized": realized,
              "half_width": (estimate["roc_auc_high"] - estimate["roc_auc_low"]) / 2}
    history.append(record)
    return {"estimate_week": week, "estimated_roc_auc": estimate["roc_auc"],
            "estimate_low": estimate["roc_auc_low"], "estimate_high": estimate["roc_auc_high"],
            "estimate_reliable": reliable, "estimate_widened_by": estimate["widened_by"],
            "served_ece": served.get("ece"), "served_ece_noise_p95": served.get("noise_p95"),
            "served_rate_error": None if scored is None else float(scored[1].mean() - scored[0].mean()),
            "estimate_realized_roc_auc": realized}


def _matured_served(looker: _Looker, production: _Version, cutoff: pd.Timestamp) -> list:
    """(labels, probabilities, customers) of each week the version served whose labels
    were final by ``cutoff``, oldest first."""
    served, week = [], pd.Timestamp(_monday(production.as_of))
    while week + pd.Timedelta(days=6) <= cutoff:
        got = looker.scored(production.name, production.predictor, str(week.date()))
        if got is not None:
            served.append(got)
        week += WEEK
    return served


def _decay_alarm(looker: _Looker, policy: _Policy, as_of: pd.Timestamp, spec: FeatureSpec,
                 plan: BacktestPlan) -> None:
    """The decay test of ``model_health`` on the production model's matured served weeks."""
    production = policy.production
    if production is None or production.name in policy.alarmed:
        return
    cutoff = as_of - pd.Timedelta(days=spec.label_horizon_days)
    served = _matured_served(looker, production, cutoff)[-plan.decay_weeks:]
    if len(served) < 2:
        return
    y, p, groups = (np.concatenate([s[i] for s in served]) for i in range(3))
    verdict = decay_test(production.holdout_roc_auc, production.holdout_se, y, p, groups, plan.max_auc_decay)
    if verdict["alarm"]:
        policy.alarmed.add(production.name)
        policy.alarms += 1


RECOVERY_TOLERANCE = 0.01


def _recovery(weeks: list[dict], event_date: pd.Timestamp | None) -> dict | None:
    """Per policy, how many weeks after ``event_date`` its realized ROC AUC first came
    within ``RECOVERY_TOLERANCE`` of the level retraining settles at in the new regime
    (always-deploy's mean over the last four decided weeks); None when never."""
    decided = [w for w in weeks if "policies" in w]
    if event_date is None or not decided:
        return None
    settled = [w["policies"]["always_deploy"]["realized_roc_auc"] for w in decided[-4:]]
    target = _mean(settled)
    if target is None:
        return None
    before = [w for w in decided if pd.Timestamp(w["as_of"]) < event_date]
    out = {}
    for policy in POLICIES:
        baseline = _mean([w["policies"][policy]["realized_roc_auc"] for w in before[-4:]])
        after = [w for w in decided if pd.Timestamp(w["as_of"]) >= event_date
                 and w["policies"][policy]["realized_roc_auc"] is not None]
        dip = min((w["policies"][policy]["realized_roc_auc"] for w in after), default=None)
        back = next((w for w in after if w["policies"][policy]["realized_roc_auc"] >= target - RECOVERY_TOLERANCE),
                    None)
        out[policy] = {"baseline": baseline, "target": target, "worst_after": dip,
                       "weeks_to_recover": None if back is None else
                       int((pd.Timestamp(back["as_of"]) - event_date).days // 7)}
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _result(plan: BacktestPlan, weeks, versions, policies, estimates, seconds: float) -> dict:
    decided = [w for w in weeks if "policies" in w]
    policy_rows = {}
    for name, policy in policies.items():
        realized = [w["policies"][name]["realized_roc_auc"] for w in decided]
        known = [r for r in realized if r is not None]
        policy_rows[name] = {"mean_realized_roc_auc": _mean(known), "worst_week_roc_auc": min(known, default=None),
                             "deploys": len(policy.deployed), "weeks_judged": len(known),
                             "decay_alarms": policy.alarms,
                             "decay_alarms_per_model_year": policy.alarms / max(len(decided), 1) * 52}
    bias = {}
    for family in sorted({v["family"] for v in versions}):
        mine = [v["holdout_bias"] for v in versions if v["family"] == family and v["holdout_bias"] is not None]
        bias[family] = {"mean": _mean(mine), "max": max(mine, default=None), "versions": len(mine)}
    judged = [e for e in estimates if e["realized"] is not None]
    covered = [w for w in decided if w.get("estimate_realized_roc_auc") is not None]
    inside = [w["estimate_low"] <= w["estimate_realized_roc_auc"] <= w["estimate_high"] for w in covered]
    trusted = [w["estimate_low"] <= w["estimate_realized_roc_auc"] <= w["estimate_high"]
               for w in covered if w.get("estimate_reliable", True)]
    gains = [v["realized_roc_auc"] - v["evaluated_fit_realized_roc_auc"] for v in versions
             if v["realized_roc_auc"] is not None and v["evaluated_fit_realized_roc_auc"] is not None]
    return {
        "plan": {"from": str(plan.start.date()), "to": str(plan.end.date()), "families": list(plan.families),
                 "seed": plan.seed, "realized_weeks": plan.realized_weeks, "calibration": plan.calibration,
                 "scenario": plan.scenario,
                 "event_date": None if plan.event_date is None else str(pd.Timestamp(plan.event_date).date()),
                 "rules": [r.__dict__ for r in plan.rules], "window": plan.window.__dict__},
        "weeks": weeks, "versions": versions, "policies": policy_rows,
        "summary": {
            "holdout_bias": bias,
            "estimate_coverage": float(np.mean(inside)) if inside else None,
            "estimate_mae": _mean([abs(e["estimated"] - e["realized"]) for e in judged]),
            "estimated_weeks": len(covered),
            # Weeks model_health would have shown as "no reliable estimate" are in the two
            # figures above all the same; this is the coverage of the rest.
            "reliable_estimate_weeks": len(trusted),
            "reliable_estimate_coverage": float(np.mean(trusted)) if trusted else None,
            "refit_gain": _mean(gains),
            # Calibration of the served probabilities on the week served next.
            "served_ece": _mean([w.get("served_ece") for w in decided]),
            "served_ece_above_noise": _mean([float(w["served_ece"] > w["served_ece_noise_p95"]) for w in decided
                                             if w.get("served_ece") is not None
                                             and w.get("served_ece_noise_p95") is not None]),
            "served_rate_error": _mean([abs(w["served_rate_error"]) for w in decided
                                        if w.get("served_rate_error") is not None]),
            "recovery": _recovery(weeks, None if plan.event_date is None else pd.Timestamp(plan.event_date)),
            "seconds": round(seconds, 1),
        },
    }
