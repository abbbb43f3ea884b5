"""The backtest (health.backtest.replay) over a matrix of settings, for BENCHMARKS.md.

    OMP_NUM_THREADS=1 nohup python bench/backtest.py --json bench/results/backtest-DATE.json \
        > /tmp/backtest.log 2>&1 &
    python bench/backtest.py --only stable --families logistic_regression --seeds 7   # one cell
    python bench/backtest.py --table bench/results/backtest-DATE.json                  # print stored

Cells: the stable simulator (3,000 customers, the default) with each family forced and
with the default families, for each seed, over 16 weeks; the same with the prior-shift
correction of the served calibrator (``--prior-shift-too``); and each scenario with the
default families. Every cell is one ``replay`` exactly as ``churn-assets backtest`` runs
it, wall time included (one process, OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from churn_assets.core.spec import load_spec  # noqa: E402
from churn_assets.core.training import MODEL_FAMILIES  # noqa: E402
from churn_assets.core.validation import validate_records  # noqa: E402
from churn_assets.health.backtest import BacktestPlan, replay  # noqa: E402
from churn_assets.sources.simulation import SimulatorSettings, simulate  # noqa: E402

STABLE = ("2026-06-22", "2026-10-05")      # 16 weekly decisions
SCENARIO = ("2026-06-01", "2026-10-26")    # 22, the scenario starting 2026-07-06
EVENT = "2026-07-06"
FAMILY_SETS = {"logistic_regression": ("logistic_regression",),
               "hist_gradient_boosting": ("hist_gradient_boosting",), "default": MODEL_FAMILIES}


def cell(scenario: str, families: str, seed: int, customers: int, prior: bool, say) -> dict:
    spec = load_spec("simulator")
    start, end = STABLE if scenario == "stable" else SCENARIO
    plan = BacktestPlan(pd.Timestamp(start), pd.Timestamp(end), families=FAMILY_SETS[families], prior_shift=prior,
                        scenario=None if scenario == "stable" else scenario,
                        event_date=None if scenario == "stable" else pd.Timestamp(EVENT))
    known = pd.Timestamp(end) + pd.Timedelta(weeks=plan.realized_weeks, days=spec.label_horizon_days)
    began = time.perf_counter()
    settings = SimulatorSettings(n_customers=customers, seed=seed, scenario=scenario, scenario_start=EVENT)
    records = validate_records(simulate(settings, known), spec)
    result = replay(records, spec, plan, known)
    seconds = time.perf_counter() - began
    say(f"{scenario} {families} seed {seed} prior_shift={prior}: {seconds:.0f} s")
    return {"scenario": scenario, "families": families, "seed": seed, "customers": customers, "prior_shift": prior,
            "seconds": round(seconds, 1), "summary": result["summary"], "policies": result["policies"],
            "versions": result["versions"], "weeks": result["weeks"]}


def fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}" if digits == 4 and value < 0.5 else f"{value:.{digits}f}"


def _reliable(summary: dict) -> str:
    """Coverage over the weeks model_health would have shown a number for (older runs lack it)."""
    if summary.get("reliable_estimate_weeks") is None:
        return "-"
    coverage = summary.get("reliable_estimate_coverage")
    return f"{'-' if coverage is None else f'{coverage:.2f}'} ({summary['reliable_estimate_weeks']})"


def table(cells: list[dict]) -> str:
    lines = ["| scenario | families | seed | prior shift | gate | always deploy | never retrain | deploys (gate)"
             " | holdout bias mean / max | estimate coverage (weeks) | reliable estimates: coverage (weeks)"
             " | estimate MAE | served ECE | decay alarms / model-year | s |", "|" + "---|" * 15]
    for c in cells:
        p, s = c["policies"], c["summary"]
        bias = "; ".join(f"{f[:3]} {b['mean']:+.4f} / {b['max']:+.4f}" for f, b in s["holdout_bias"].items()
                         if b["mean"] is not None)
        lines.append(
            f"| {c['scenario']} | {c['families']} | {c['seed']} | {'yes' if c['prior_shift'] else 'no'} |"
            f" {p['gate']['mean_realized_roc_auc']:.4f} | {p['always_deploy']['mean_realized_roc_auc']:.4f} |"
            f" {p['never_retrain']['mean_realized_roc_auc']:.4f} | {p['gate']['deploys']} | {bias} |"
            f" {s['estimate_coverage']:.2f} ({s['estimated_weeks']}) | {_reliable(s)} | {s['estimate_mae']:.4f} |"
            f" {s.get('served_ece') or float('nan'):.4f} | {p['gate']['decay_alarms_per_model_year']:.1f} |"
            f" {c['seconds']:.0f} |")
    recovered = [c for c in cells if c["summary"].get("recovery")]
    if recovered:
        lines += ["", "| scenario | seed | weeks to recover: gate / always deploy / never retrain | worst realized"
                  " after (gate) | level retraining settles at |", "|---|---|---|---|---|"]
        for c in recovered:
            r = c["summary"]["recovery"]
            weeks = " / ".join("never" if r[k]["weeks_to_recover"] is None else str(r[k]["weeks_to_recover"])
                               for k in ("gate", "always_deploy", "never_retrain"))
            lines.append(f"| {c['scenario']} | {c['seed']} | {weeks} | {r['gate']['worst_after']:.4f} |"
                         f" {r['gate']['target']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--families", nargs="+", default=list(FAMILY_SETS))
    parser.add_argument("--only", choices=["stable", "scenarios"])
    parser.add_argument("--prior-shift-too", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--table", help="print the table of a stored result and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())["cells"]))
        return
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cells = []
    if args.only in (None, "stable"):
        for families in args.families:
            for seed in args.seeds:
                cells.append(cell("stable", families, seed, args.customers, False, say))
                if args.prior_shift_too:
                    cells.append(cell("stable", families, seed, args.customers, True, say))
    if args.only in (None, "scenarios"):
        for scenario in ("concept_shift", "new_category", "missing_feature"):
            cells.append(cell(scenario, "default", args.seeds[0], args.customers, False, say))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "python": platform.python_version(),
            "machine": f"{os.cpu_count()} cores", "args": vars(args), "cells": cells}, default=str))
    print(table(cells))


if __name__ == "__main__":
    main()
