"""Benchmark: the whole refresh on ~1,000,000 simulated snapshots, Dagster vs a bare script.

Both run as child processes on the same Parquet export, alternating, in one session;
wall time includes interpreter start-up for both. Peak memory is the child's max RSS.

    .venv/bin/python bench/pipeline.py [--customers 50000] [--weeks 20] [--repeats 2]
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from churn_assets.sources.simulation import DEFAULT_START, SimulatorSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


STEP_DONE = re.compile(r' - (\w+) - STEP_SUCCESS - Finished execution of step "\w+" in ([\d.]+)(ms|s)')


def step_seconds(output: str) -> dict[str, float]:
    """Seconds per finished step, from Dagster's log lines."""
    return {m.group(1): float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
            for m in STEP_DONE.finditer(output)}


def run_child(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and output of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stdout.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"{command[0]} failed")
    return wall, usage.ru_maxrss / 1024 / 1024, output.decode(errors="replace")  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--weeks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="churn-bench-"))
    as_of = pd.Timestamp(DEFAULT_START) + pd.Timedelta(weeks=args.weeks)
    frame = simulate(SimulatorSettings(n_customers=args.customers), as_of)
    data = work / "snapshots.parquet"
    frame.to_parquet(data, index=False)
    print(f"{len(frame):,} snapshots, {frame['snapshot_date'].nunique()} weeks -> {data}")

    results = {"bare": [], "dagster": []}
    for repeat in range(args.repeats):
        for variant in ("bare", "dagster"):
            home = work / f"{variant}-{repeat}"
            config = work / f"{variant}-{repeat}.toml"
            config.write_text(f'home = "{home}"\nspec = "simulator"\n[source]\nkind = "file"\npath = "{data}"\n')
            env = dict(os.environ, CHURN_ASSETS_CONFIG=str(config), CHURN_ASSETS_HOME=str(home))
            if variant == "bare":
                command = [sys.executable, str(ROOT / "bench" / "bare_refresh.py"), "--data", str(data), "--home", str(home)]
            else:
                command = [str(BIN / "dagster"), "asset", "materialize", "-m", "churn_assets", "--select", "*"]
            wall, peak, output = run_child(command, env)
            if variant == "dagster":
                steps = step_seconds(output)
            results[variant].append((wall, peak))
            print(f"  {variant:8s} run {repeat + 1}: {wall:6.1f} s, peak {peak:.2f} GiB", flush=True)

    bare = statistics.median(w for w, _ in results["bare"])
    dag = statistics.median(w for w, _ in results["dagster"])
    print()
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| variant | median wall (s) | peak RSS (GiB) |\n|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {statistics.median(w for w, _ in runs):.1f} | {max(p for _, p in runs):.2f} |")
    print(f"ratio dagster / bare: {dag / bare:.2f}x over {args.repeats} alternating runs each")
    # Model-health work (issue 9): the drift check and model_health run beside the
    # refresh; evaluation_report now also computes intervals, importance and plots and
    # deployed_model writes the card. Their whole step times bound that cost from above.
    health = {k: v for k, v in steps.items()
              if k in ("clean_features_data_drift", "model_health", "evaluation_report", "deployed_model")}
    total = sum(steps.values())
    print("\n| step (last dagster run) | seconds |\n|---|---:|")
    for name, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds:.1f} |")
    print(f"health steps (upper bound of the drift + plots + card cost): {sum(health.values()):.1f} s"
          f" of {total:.1f} s of steps ({sum(health.values()) / total:.1%})")


if __name__ == "__main__":
    main()
