"""Benchmark: how close is the label-free ROC AUC estimate (CBPE) to the realized one?

Walk-forward over the simulator's drifting weeks (churn_assets.health.estimate_study):
a model deployed each ``--every`` weeks estimates every snapshot week whose labels are
still open, and is scored on it once the labels are final. Reports the share of weeks
where |estimate - realized| <= 0.02, per calibration, and the per-week table.

    .venv/bin/python bench/estimate_accuracy.py [--customers 20000] [--first 2026-04-06]
        [--last 2026-09-07] [--every 2] [--calibration sigmoid]
"""

import argparse
import datetime as dt
import platform
import time

import pandas as pd

from churn_assets.core.spec import load_spec
from churn_assets.core.training import MODEL_FAMILIES
from churn_assets.core.validation import validate_records
from churn_assets.health.estimate_study import diagnose, replay, summarize
from churn_assets.sources.simulation import SimulatorSettings, simulate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first", default="2026-04-06")
    parser.add_argument("--last", default="2026-09-07")
    parser.add_argument("--every", type=int, default=2, help="weeks between deploys")
    parser.add_argument("--calibration", default="sigmoid", choices=["sigmoid", "isotonic"])
    parser.add_argument("--families", default=",".join(MODEL_FAMILIES))
    parser.add_argument("--table", action="store_true", help="print the per-week table")
    parser.add_argument("--diagnose", action="store_true",
                        help="per family (each forced): leaky vs purged validation, three ways to serve")
    args = parser.parse_args()

    spec = load_spec("simulator")
    deploys = pd.date_range(args.first, args.last, freq=f"{7 * args.every}D")
    # Labels of the last estimated week are final 28 days after it.
    final_as_of = deploys[-1] + pd.Timedelta(days=spec.label_horizon_days + 7)
    start = time.perf_counter()
    records = validate_records(simulate(SimulatorSettings(n_customers=args.customers, seed=args.seed),
                                        final_as_of), spec)
    records = records[records[spec.timestamp_column] <= deploys[-1]].reset_index(drop=True)
    if args.diagnose:
        print_diagnosis(diagnose(records, spec, [str(d.date()) for d in deploys], families=args.families.split(",")),
                        time.perf_counter() - start)
        return
    table = replay(records, spec, [str(d.date()) for d in deploys], families=args.families.split(","),
                   calibration=args.calibration)
    seconds = time.perf_counter() - start
    summary = summarize(table)
    print(f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.python_version()};"
          f" {seconds:.0f} s")
    print(f"- data: simulator seed {args.seed}, {args.customers} customers, {len(records):,} snapshots;"
          f" deploys {deploys[0].date()} .. {deploys[-1].date()} every {args.every} week(s);"
          f" families {args.families}")
    print()
    print(summary.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else summary.to_string())
    chosen = table.drop_duplicates("deploy").set_index("deploy")["family"]
    print()
    print("family chosen per deploy: " + ", ".join(f"{d} {f}" for d, f in chosen.items()))
    if args.table:
        # One row per (deploy, week): the served estimate with its interval, the raw one beside it.
        keys = ["deploy", "family", "week", "age_weeks"]
        served = table[table["source"] == "served"].set_index(keys)
        raw = table[table["source"] != "served"].set_index(keys)
        shown = pd.DataFrame({
            "estimate": served["estimated_roc_auc"], "low": served["low"], "high": served["high"],
            "realized": served["realized_roc_auc"], "error": served["abs_error"],
            "raw_estimate": raw["estimated_roc_auc"], "raw_error": raw["abs_error"],
            "exp_churn": served["expected_churn_rate"], "raw_exp_churn": raw["expected_churn_rate"],
            "churn": served["churn_rate"], "ece": served["ece"], "rows": served["rows"],
        }).reset_index()
        print()
        print(shown.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else shown.to_string())


def print_diagnosis(table: pd.DataFrame, seconds: float) -> None:
    table = table.assign(within_0_02=table["error"].abs() <= 0.02)
    grouped = table.groupby(["family", "variant"], sort=False)
    shown = grouped.agg(validation_auc_min=("validation_auc", "min"), validation_auc_max=("validation_auc", "max"),
                        purged_validation_auc_min=("purged_validation_auc", "min"),
                        purged_validation_auc_max=("purged_validation_auc", "max"), slope=("slope", "mean"),
                        holdout_auc=("holdout_roc_auc", "mean"), realized_auc=("realized_roc_auc", "mean"),
                        mean_error=("error", "mean"), within_0_02=("within_0_02", "mean"),
                        weeks=("error", "size")).reset_index()
    print(f"- {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {seconds:.0f} s")
    print(shown.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else shown.to_string())


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
