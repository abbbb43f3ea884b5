"""How the deployment gate's rules err inside the real weekly loop.

    OMP_NUM_THREADS=1 nohup python bench/gate_study.py --customers 1000 3000 --seeds 7 11 \
        --json bench/results/gate-study-DATE.json > /tmp/gate_study.log 2>&1 &
    python bench/gate_study.py --rules-only bench/results/gate-study-DATE.json   # re-judge stored runs

The loop is the real one (``health.backtest``'s ingredients): for each weekly ``as_of``
on the simulator, ``train_challenger`` trains a challenger with the default families
(family choice, calibration choice, the evaluated and the deployed fit), and
``evaluate_holdout`` compares it with a week-old champion (last week's challenger, as in
a weekly loop) and the recent versions, on a holdout where most customers appear in
both weeks, with customer-grouped inference. Two sabotaged challengers are trained on
the same weeks with part of the signal destroyed in every training row (the columns
shuffled across rows: what a broken export column does): "mild" (support tickets),
"borderline" (tenure, support tickets and plan: about the 0.02 a gate must catch),
"moderate" (sessions) and "severe" (sessions, orders and support tickets).

The truth of each comparison is what the deployed fits then did: the mean ROC AUC of the
challenger's and the champion's deployed fits on the four weeks after ``as_of``, once
their labels are final. Every rule set is judged on the stored comparisons with the real
``evaluate_gate``:

- false refusal: an honest challenger refused although it was not worse in truth by
  more than ``--not-worse`` (0.005);
- missed regression: a sabotaged challenger accepted although it was worse in truth by
  at least ``--worse`` (0.02).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the shared 2-core machine

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from churn_assets.core.encoding import fit_preprocessor  # noqa: E402
from churn_assets.core.evaluation import contender, evaluate_holdout  # noqa: E402
from churn_assets.core.gate import DEFAULT_RULES, GateRule, evaluate_gate  # noqa: E402
from churn_assets.core.metrics import churn_metrics  # noqa: E402
from churn_assets.core.spec import LABEL, load_spec  # noqa: E402
from churn_assets.core.training import MODEL_FAMILIES, WindowPlan, split_by_time, train_challenger  # noqa: E402
from churn_assets.core.validation import validate_records  # noqa: E402
from churn_assets.health.production import week_start  # noqa: E402
from churn_assets.sources.simulation import SimulatorSettings, simulate  # noqa: E402

SABOTAGE = {"mild": ["support_tickets_last_90d"], "borderline": ["tenure_days", "support_tickets_last_90d", "plan"],
            "moderate": ["sessions_last_30d"],
            "severe": ["sessions_last_30d", "orders_last_30d", "support_tickets_last_90d"]}
FLOORS = [GateRule("roc_auc", floor=0.70), GateRule("pr_auc", floor=0.20)]


def rule_sets() -> dict[str, list[GateRule]]:
    """Candidate rule sets; each also keeps the floors."""
    out = {}
    for allowance in (0.0, 0.0025, 0.005, 0.01):
        out[f"roc noninf {allowance}"] = [GateRule("roc_auc", max_regression=allowance, mode="noninferiority")]
    out["roc point 0.005"] = [GateRule("roc_auc", max_regression=0.005, mode="point")]
    for recent in (0.005, 0.01, 0.02):
        out[f"roc noninf 0.0025 + best recent {recent}"] = [
            GateRule("roc_auc", max_regression=0.0025, mode="noninferiority"),
            GateRule("roc_auc", max_regression=recent, against="best_recent")]
    out["roc noninf 0.0025 + pr point 0.01"] = [
        GateRule("roc_auc", max_regression=0.0025, mode="noninferiority"),
        GateRule("pr_auc", max_regression=0.01, mode="point")]
    out["roc noninf 0.0025 + pr noninf 0.01"] = [
        GateRule("roc_auc", max_regression=0.0025, mode="noninferiority"),
        GateRule("pr_auc", max_regression=0.01, mode="noninferiority")]
    for skill in (0.01, 0.02):
        out[f"roc noninf 0.0025 + brier skill noninf {skill}"] = [
            GateRule("roc_auc", max_regression=0.0025, mode="noninferiority"),
            GateRule("brier_skill", max_regression=skill, mode="noninferiority")]
    out["default (core.gate.DEFAULT_RULES)"] = list(DEFAULT_RULES)
    return out


def shuffled(frames, columns: list[str], seed: int):
    """``frames`` with ``columns`` permuted across the rows of every labelled frame."""
    import copy

    out = copy.copy(frames)
    rng = np.random.default_rng(seed)
    for name in ("train", "embargo", "validation", "holdout"):
        frame = getattr(frames, name).copy()
        for column in columns:
            frame[column] = rng.permutation(frame[column].to_numpy())
        setattr(out, name, frame)
    return out


def realized(model, records, weeks_index, weeks: list[str], final_until) -> float | None:
    values = []
    for week in weeks:
        index = weeks_index.get(week)
        if index is None:
            continue
        rows = records.iloc[index]
        if rows["snapshot_date"].max() > final_until:
            continue
        y = rows[LABEL].to_numpy()
        if np.unique(y).size == 2:
            values.append(churn_metrics(y, model.predict_proba(rows), model.threshold)["roc_auc"])
    return float(np.mean(values)) if values else None


def study(customers: int, seed: int, start: str, end: str, say) -> list[dict]:
    spec = load_spec("simulator")
    known_on = pd.Timestamp(end) + pd.Timedelta(weeks=4, days=spec.label_horizon_days)
    records = validate_records(simulate(SimulatorSettings(n_customers=customers, seed=seed), known_on), spec)
    weeks = week_start(records["snapshot_date"])
    index = weeks.groupby(weeks).indices
    final_until = known_on - pd.Timedelta(days=spec.label_horizon_days)
    dates = pd.to_datetime(records["snapshot_date"])
    previous, recent, rows = None, [], []
    for as_of in pd.date_range(start, end, freq="7D"):
        tick = time.perf_counter()
        frames = split_by_time(records[(dates <= as_of).to_numpy()], spec, WindowPlan(), as_of)
        ahead = [str((as_of + pd.Timedelta(weeks=k)).date()) for k in range(4)]
        trained = {}
        for kind, columns in (("honest", []), *SABOTAGE.items()):
            cut = shuffled(frames, columns, seed) if columns else frames
            preprocessor = fit_preprocessor(spec, [cut.train, cut.validation])
            trained[kind], _ = train_challenger(cut, spec, preprocessor, list(MODEL_FAMILIES), 42, "study",
                                                str(as_of.date()))
        if previous is not None:
            champion_truth = realized(previous, records, index, ahead, final_until)
            for kind, model in trained.items():
                measured = evaluate_holdout(frames.holdout, spec, model, contender("champion", previous),
                                            [contender(f"r{i}", m) for i, m in enumerate(recent[-4:])])
                truth = realized(model, records, index, ahead, final_until)
                rows.append({
                    "customers": customers, "seed": seed, "as_of": str(as_of.date()), "kind": kind,
                    "family": model.family, "holdout_rows": len(frames.holdout),
                    "challenger": measured.challenger, "champion": measured.champion,
                    "comparisons": measured.comparisons, "best_recent": measured.best_recent,
                    "truth_delta": None if truth is None or champion_truth is None else truth - champion_truth})
        previous = trained["honest"]
        recent.append(previous)
        say(f"{customers} customers, seed {seed}, {as_of.date()}: {time.perf_counter() - tick:.0f} s")
    return rows


def judge(rows: list[dict], rules: list[GateRule], not_worse: float, worse: float) -> dict:
    counts = {"honest_fair": 0, "honest_refused": 0, "broken": 0, "broken_accepted": 0}
    for row in rows:
        if row["truth_delta"] is None or row["champion"] is None:
            continue
        verdict = evaluate_gate(row["challenger"], row["champion"], [*FLOORS, *rules],
                                comparisons=row["comparisons"] or None, best_recent=row["best_recent"],
                                champion_version="champion")
        if row["kind"] == "honest" and row["truth_delta"] >= -not_worse:
            counts["honest_fair"] += 1
            counts["honest_refused"] += not verdict.passed
        if row["kind"] != "honest" and row["truth_delta"] <= -worse:
            counts["broken"] += 1
            counts["broken_accepted"] += verdict.passed
    return counts


def wilson(k: int, n: int) -> str:
    if n == 0:
        return "-"
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * p:.1f}% ({100 * max(0, centre - half):.1f}-{100 * min(1, centre + half):.1f}%, {k}/{n})"


def report(rows: list[dict], not_worse: float, worse: float) -> str:
    lines = []
    for customers in sorted({r["customers"] for r in rows}):
        mine = [r for r in rows if r["customers"] == customers]
        drops = {kind: [r["truth_delta"] for r in mine if r["kind"] == kind and r["truth_delta"] is not None]
                 for kind in ("honest", *SABOTAGE)}
        seeds = sorted({r["seed"] for r in mine})
        lines.append(f"\n{customers} customers, seeds {seeds} ({mine[0]['holdout_rows']} holdout rows in the first week);"
                     " realized challenger - champion: " + ", ".join(
                         f"{k} mean {np.mean(v):+.4f} (min {min(v):+.4f})" for k, v in drops.items() if v))
        lines += ["", "| rules (plus floors) | honest, not worse, refused | sabotaged, >= "
                  f"{worse} worse, accepted |", "|---|---|---|"]
        for name, rules in rule_sets().items():
            c = judge(mine, rules, not_worse, worse)
            lines.append(f"| {name} | {wilson(c['honest_refused'], c['honest_fair'])} |"
                         f" {wilson(c['broken_accepted'], c['broken'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--from", dest="start", default="2026-06-29")
    parser.add_argument("--to", dest="end", default="2026-09-28")
    parser.add_argument("--not-worse", type=float, default=0.005)
    parser.add_argument("--worse", type=float, default=0.02)
    parser.add_argument("--json", help="write every comparison here")
    parser.add_argument("--rules-only", nargs="+", help="judge the comparisons stored in these JSON files instead")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.rules_only:
        rows = [row for path in args.rules_only for row in json.loads(Path(path).read_text())["rows"]]
    else:
        rows = []
        for customers in args.customers:
            for seed in args.seeds:
                rows += study(customers, seed, args.start, args.end, lambda m: print(m, file=sys.stderr, flush=True))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
                "python": platform.python_version(), "args": vars(args), "rows": rows}, default=str))
    print(f"gate study: {len(rows)} comparisons, {time.perf_counter() - started:.0f} s;"
          f" not worse = realized drop < {args.not_worse}, worse = realized drop >= {args.worse}")
    print(report(rows, args.not_worse, args.worse))


if __name__ == "__main__":
    main()
