"""Benchmark: a first refresh through Dagster whose training window holds N million rows.

    .venv/bin/python bench/big_refresh.py [--millions 10] [--threads 1]

``bench/scale.py --parts big`` times the data and training phases in one bare process;
this runs what a user runs, ``dagster asset materialize -m churn_assets --select '*'``
(in-process executor, every step in one process), on a file export of the same tiled
history (18 weekly snapshots of 84,000 simulated customers per million window rows,
under renamed ids). Peak memory is the child's max RSS (``wait4``); the parent writes
the export in a child of its own first, so its own peak stays small (Linux carries a
parent's peak into an exec'd child's ``ru_maxrss``). The resident size is also sampled
every 0.5 s and attributed to the step running then, for a per-step peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Step keys of graph-backed assets have a dot: "churn_scores.score_with_production".
STEP_START = re.compile(r' - ([\w.]+) - STEP_START - Started execution of step "([\w.]+)"')
STEP_DONE = re.compile(r' - ([\w.]+) - STEP_SUCCESS - Finished execution of step "[\w.]+" in (\S+)\.?$')
DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)(ms|s))?$")


def seconds(text: str) -> float:
    """Dagster's step duration ("150ms", "2.5s", "13m37s", "1h2m3s") in seconds."""
    hours, minutes, value, unit = DURATION.match(text).groups()
    rest = float(value or 0) / (1000 if unit == "ms" else 1)
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + rest


def write_export(path: Path, millions: int, per_million: int) -> tuple[int, str]:
    """Rows and as_of of the tiled export written to ``path`` (runs in a child)."""
    code = (
        "import sys, json, pandas as pd; sys.path.insert(0, %r)\n"
        "from scale import START, tiled\n"
        "from churn_assets.sources.simulation import SimulatorSettings, simulate\n"
        "as_of = START + pd.Timedelta(weeks=18)\n"
        "batch = tiled(simulate(SimulatorSettings(n_customers=%d), as_of), %d)\n"
        "batch.to_parquet(%r, index=False)\n"
        "print(json.dumps([len(batch), str(as_of.date())]))\n"
    ) % (str(ROOT / "bench"), per_million, millions, str(path))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    rows, as_of = json.loads(out.stdout.strip().splitlines()[-1])
    return rows, as_of


def rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except FileNotFoundError:
        pass
    return 0.0


def materialize(env: dict) -> dict:
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "churn_assets", "--select", "*"]
    began = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = {"step": "(start-up)", "peaks": {}, "seconds": {}, "log": []}

    def sample():
        while proc.poll() is None:
            step = state["step"]
            state["peaks"][step] = max(state["peaks"].get(step, 0.0), rss_gib(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        state["log"].append(line)
        if started := STEP_START.search(line):
            state["step"] = started.group(2)
            print(f"  {time.perf_counter() - began:7.1f} s  {state['step']}", flush=True)
        if done := STEP_DONE.search(line):
            state["seconds"][done.group(1)] = seconds(done.group(2).rstrip("."))
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stdout.write("".join(state["log"])[-6000:])
        raise SystemExit("dagster asset materialize failed")
    return {"wall_s": round(time.perf_counter() - began, 1), "peak_gib": round(usage.ru_maxrss / 2**20, 2),
            "step_seconds": state["seconds"],
            "step_sampled_peak_gib": {k: round(v, 2) for k, v in state["peaks"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--millions", type=int, default=10, help="training-window rows, millions")
    parser.add_argument("--customers-per-million", type=int, default=84_000)
    parser.add_argument("--threads", default="1", help="CHURN_ASSETS_THREADS for the run")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="churn-big-refresh-"))
    export = work / "export.parquet"
    rows, as_of = write_export(export, args.millions, args.customers_per_million)
    print(f"{rows:,} snapshots as of {as_of} -> {export}", flush=True)
    home = work / "home"
    config = work / "churn_assets.toml"
    config.write_text(f'home = "{home}"\nspec = "simulator"\n[source]\nkind = "file"\npath = "{export}"\n')
    env = dict(os.environ, CHURN_ASSETS_CONFIG=str(config), CHURN_ASSETS_HOME=str(home),
               CHURN_ASSETS_THREADS=args.threads, DAGSTER_HOME=str(work / "dagster"))
    (work / "dagster").mkdir()
    load_before = os.getloadavg()
    result = materialize(env)
    result.update(millions=args.millions, batch_rows=rows, as_of=as_of, threads=args.threads,
                  loadavg_before=load_before, loadavg_after=os.getloadavg(),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  machine=f"{os.cpu_count()} cores, Python {platform.python_version()}")
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    export.unlink()


if __name__ == "__main__":
    main()
