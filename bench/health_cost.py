"""Benchmark: what drift + decay + estimates cost on a large refresh, relative to the refresh.

Two weekly refreshes of the whole graph (in-process, as ``churn_refresh`` runs it) on a
simulated customer base: the first bootstraps production, the second is the steady
state measured here (a week of new snapshots plus the re-sent rows whose labels
changed; production exists, so the drift check scores it, and ``model_health`` records
one matured week and estimates the open ones). Step times come from the run's own
event log (STEP_START -> STEP_SUCCESS).

    .venv/bin/python bench/health_cost.py [--customers 50000] [--as-of 2026-05-25]
"""

import argparse
import datetime as dt
import os
import platform
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import dagster as dg

from churn_assets.defs.definitions import ASSETS, CHECKS, build_resources
from churn_assets.settings import Settings
from churn_assets.sources.simulator import SimulatorSource
from churn_assets.storage.history import CustomerHistory

MONITORING_STEPS = ("clean_features_data_drift", "model_health")


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    started, took = {}, defaultdict(float)
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and entry.step_key in started:
            took[entry.step_key] += entry.timestamp - started.pop(entry.step_key)
    return dict(took)


def refresh(home: Path, customers: int, as_of: str, instance) -> tuple[float, dg.ExecuteInProcessResult]:
    settings = Settings(home=home)
    start = time.perf_counter()
    result = dg.materialize(ASSETS + CHECKS, instance=instance, raise_on_error=True,
                            resources=build_resources(settings, SimulatorSource(n_customers=customers,
                                                                                as_of=as_of)))
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=50000)
    parser.add_argument("--as-of", default="2026-05-25", help="the first measured refresh")
    parser.add_argument("--measured", type=int, default=1,
                        help="weekly refreshes measured after the bootstrap; the first after a bootstrap"
                             " also estimates the 3 older open weeks once, later ones only the newest")
    args = parser.parse_args()
    second = dt.date.fromisoformat(args.as_of)
    first = second - dt.timedelta(days=7)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        instance = dg.DagsterInstance.ephemeral()
        boot, _ = refresh(home, args.customers, str(first), instance)
        for week in range(args.measured):
            as_of = second + dt.timedelta(days=7 * week)
            wall, result = refresh(home, args.customers, str(as_of), instance)
            report(step_seconds(instance, result.run_id), wall, as_of, boot, first, args.customers,
                   CustomerHistory(home / "history").total_rows())


def report(steps: dict, wall: float, second, boot: float, first, customers: int, history_rows: int) -> None:
    monitoring = sum(steps.get(s, 0.0) for s in MONITORING_STEPS)
    rest = wall - monitoring
    print()
    print(f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()};"
          f" {os.cpu_count()} cores; load average before {os.getloadavg()[0]:.1f};"
          f" OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"- data: simulator {customers} customers; history {history_rows:,} rows after the measured"
          f" refresh (as of {second}); bootstrap refresh (as of {first}) took {boot:.1f} s")
    print(f"- peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024:.2f} GiB")
    print()
    print("| step | seconds |")
    print("|---|---:|")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"| {step}{' (monitoring)' if step in MONITORING_STEPS else ''} | {seconds:.2f} |")
    print(f"| **run wall time** | **{wall:.2f}** |")
    print()
    print(f"monitoring {monitoring:.2f} s = {100 * monitoring / rest:.1f}% of the refresh without it"
          f" ({rest:.2f} s); goal < 10%")


if __name__ == "__main__":
    main()
