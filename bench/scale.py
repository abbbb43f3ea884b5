"""Benchmark: a refresh's cost as the history grows (issue 11 §1).

    .venv/bin/python bench/scale.py [--parts weekly,big,threads,engines] [--customers 100000]

weekly   one incremental weekly refresh (upsert the new batch + windowed read +
         split_by_time) at 100,000 customers on top of 10, 20, 40 and 80 stored weeks,
         for each --window-weeks (5 is the longest window a 10-week history fills),
         and the history code of --baseline-rev at --legacy-weeks.
big      a first refresh (the batch pickled and loaded by Dagster's io manager,
         validate + upsert in chunks and in one frame, windowed read + split) whose
         training window holds 1 M, 3 M and 10 M snapshots, plus fitting the
         preprocessing and training both families up to --train-up-to.
threads  training beside a second CPU-bound process, with and without a thread budget.
engines  the windowed read with pyarrow datasets vs DuckDB (if importable).

Every measurement is a child process (fresh interpreter, peak = its max RSS); variants
that are compared run alternately in the same session.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START = pd.Timestamp("2026-01-05")
KEYS = ["customer_id", "snapshot_date"]


def child(mode: str, *args: str, env: dict | None = None) -> dict:
    """Run ``scale.py --child mode args`` and return its JSON line plus wall and peak."""
    command = [sys.executable, __file__, "--child", mode, *args]
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ), cwd=ROOT)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} {args} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - began, 2)
    return result


def peak_gib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: after a vfork + exec, Linux carries
    the parent's peak into the child's ru_maxrss."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# ---------------------------------------------------------------------------- children

def run_weekly(home: str, batch: str, as_of: str, legacy: str, window_weeks: str = "12") -> dict:
    from churn_assets.core.spec import LABEL, churn_label, load_spec
    from churn_assets.core.training import WindowPlan, split_by_time
    from churn_assets.defs.window import load_modeling_frames, load_training_history

    spec, plan = load_spec("simulator"), WindowPlan(training_window_weeks=int(window_weeks))
    records = pd.read_parquet(batch)
    base = peak_gib()
    phase_peaks = {}

    def phase_peak(name):
        # Each phase's own peak (the reset makes VmHWM the current RSS); Linux only.
        phase_peaks[f"{name}_peak_gib"] = round(peak_gib(), 2)
        Path("/proc/self/clear_refs").write_text("5")

    began = time.perf_counter()
    if legacy:
        import importlib.util
        module_spec = importlib.util.spec_from_file_location("old_history", legacy)
        old = importlib.util.module_from_spec(module_spec)
        sys.modules["old_history"] = old  # dataclasses look their module up there
        module_spec.loader.exec_module(old)
        history = old.CustomerHistory(home)
    else:
        from churn_assets.storage.history import CustomerHistory
        history = CustomerHistory(home)
    summary = history.upsert(records, KEYS, state={"as_of": as_of})
    upserted = time.perf_counter()
    overall = peak_gib()
    phase_peak("upsert")
    if legacy:  # HEAD's refresh: read the window, then split it
        if hasattr(history, "weeks"):
            stored = load_training_history(history, spec, plan, pd.Timestamp(as_of))
        else:
            stored = history.load()  # the single-file layout (before commit 0c36422)
        stored[LABEL] = churn_label(stored[spec.target_column], spec)
        frames = split_by_time(stored, spec, plan, pd.Timestamp(as_of))
        del stored
    else:  # what clean_features does now
        frames = load_modeling_frames(history, spec, plan, pd.Timestamp(as_of))
    done = time.perf_counter()
    overall = max(overall, peak_gib())
    phase_peak("read_split")

    def gib(frame):
        return round(frame.memory_usage(deep=True).sum() / 2**30, 3)

    return {"batch_rows": len(records), "history_rows": summary.total_rows,
            "window_rows": len(frames.train) + len(frames.validation),
            "holdout_rows": len(frames.holdout), "held_back_rows": frames.held_back_rows,
            "upsert_s": round(upserted - began, 2), "read_split_s": round(done - upserted, 2),
            "total_s": round(done - began, 2),
            "peak_gib": round(overall, 2), "peak_before_gib": round(base, 2), **phase_peaks,
            # The floor: what the next step is handed, whatever the code does.
            "output_frames_gib": round(sum(gib(f) for f in (frames.train, frames.validation,
                                                            frames.holdout)), 3)}


def run_big(batch: str, home: str, as_of: str, train: str, chunk_rows: str) -> dict:
    """A first refresh as the in-process run does it: the source's batch, raw_customers'
    output pickled by Dagster's default io manager and loaded by clean_features, then
    validate + upsert (``store_batch``, in chunks), ``load_modeling_frames``, and optionally
    training. ``chunk_rows`` 0: validation in one frame and read-then-split, as before."""
    import dagster as dg
    from churn_assets.core.spec import LABEL, churn_label, load_spec
    from churn_assets.core.training import WindowPlan, split_by_time
    from churn_assets.core.validation import validate_records
    from churn_assets.defs.data import RawBatch, store_batch
    from churn_assets.defs.window import load_modeling_frames, load_training_history
    from churn_assets.storage.history import CustomerHistory

    spec, plan, as_of = load_spec("simulator"), WindowPlan(), pd.Timestamp(as_of)
    phases, t = {}, time.perf_counter()

    def mark(name):
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 1)
        phases[f"{name}_peak_gib"] = round(peak_gib(), 2)
        phases["overall_peak_gib"] = max(phases.get("overall_peak_gib", 0), phases[f"{name}_peak_gib"])
        # Progress on stderr, so a run stopped during a long training still tells how far it got.
        print(json.dumps({name: phases[name], f"{name}_peak_gib": phases[f"{name}_peak_gib"]}),
              file=sys.stderr, flush=True)
        # Reset VmHWM so the next phase reports its own peak (Linux: clear_refs 5).
        Path("/proc/self/clear_refs").write_text("5")
        t = now

    records = pd.read_parquet(batch)
    mark("read_batch")
    # raw_customers' output goes through the default io manager (FilesystemIOManager:
    # pickled to a file), and clean_features loads it back.
    io = dg.FilesystemIOManager(base_dir=f"{home}-io").create_io_manager(dg.build_init_resource_context())
    key = dg.AssetKey("raw_customers")
    output = dg.build_output_context(asset_key=key)
    io.handle_output(output, RawBatch(records, None, as_of, "bench"))
    del records
    mark("pickle_batch")
    raw = io.load_input(dg.build_input_context(asset_key=key, upstream_output=output))
    mark("unpickle_batch")
    history, state = CustomerHistory(home), {"as_of": str(as_of)}
    if int(chunk_rows) > 0:
        store_batch(history, raw.records, spec, state, chunk_rows=int(chunk_rows))
    else:
        valid = validate_records(raw.records, spec).drop(columns=[LABEL])
        history.upsert(valid, spec.key_columns, state=state)
        del valid
    raw.records = raw.records.iloc[:0]  # as clean_features does once the batch is stored
    mark("validate_and_upsert")
    if int(chunk_rows) > 0:  # what clean_features does now
        frames = load_modeling_frames(history, spec, plan, as_of)
    else:  # as before: read the window, then split it
        stored = load_training_history(history, spec, plan, as_of)
        stored[LABEL] = churn_label(stored[spec.target_column], spec)
        frames = split_by_time(stored, spec, plan, as_of)
        del stored
    mark("read_split")
    window_rows = len(frames.train) + len(frames.validation)
    if train:
        import datetime as dt
        from churn_assets.core.code_version import code_version
        from churn_assets.core.encoding import fit_preprocessor
        from churn_assets.core.metrics import churn_metrics
        from churn_assets.core.training import MODEL_FAMILIES, train_challenger
        from churn_assets.defs.threads import thread_budget

        with thread_budget():
            preprocessor = fit_preprocessor(spec, [frames.train, frames.validation])  # as fitted_scaler
            mark("fit_preprocessor")
            model, _ = train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42,
                                        code_version(), dt.datetime.now(dt.timezone.utc).isoformat())
            mark("train_both_families")
            churn_metrics(frames.holdout[LABEL].to_numpy(), model.predict_proba(frames.holdout),
                          model.threshold)
            mark("evaluate")
    return {"window_rows": window_rows, "history_rows": history.total_rows(), **phases}


def run_threads(data: str, budget: str) -> dict:
    from churn_assets.core.code_version import code_version
    from churn_assets.core.features import build_preprocessor
    from churn_assets.core.spec import LABEL, churn_label, load_spec
    from churn_assets.core.training import MODEL_FAMILIES, WindowPlan, split_by_time, train_challenger
    from churn_assets.defs.threads import thread_budget

    spec = load_spec("simulator")
    stored = pd.read_parquet(data)
    stored[LABEL] = churn_label(stored[spec.target_column], spec)
    as_of = stored[spec.timestamp_column].max()
    frames = split_by_time(stored, spec, WindowPlan(), as_of)
    began = time.perf_counter()
    if budget == "none":
        threads = "default"
        preprocessor = build_preprocessor(spec).fit(frames.training_window)
        train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, code_version(), "x")
    else:
        with thread_budget(budget) as threads:
            preprocessor = build_preprocessor(spec).fit(frames.training_window)
            train_challenger(frames, spec, preprocessor, list(MODEL_FAMILIES), 42, code_version(), "x")
    return {"threads": threads, "train_s": round(time.perf_counter() - began, 1),
            "window_rows": len(frames.train) + len(frames.validation)}


def run_engine(home: str, since: str, engine: str) -> dict:
    from churn_assets.storage.history import CustomerHistory
    history = CustomerHistory(home)
    began = time.perf_counter()
    if engine == "pyarrow":
        frame = history.load(since=since)
    else:
        sys.path.insert(0, "/tmp/duckdb_eval")
        import duckdb
        files = [str(history.week_path(w)) for w in history.weeks()
                 if w + pd.Timedelta(weeks=1) > pd.Timestamp(since)]
        con = duckdb.connect()
        con.execute("SET threads TO 2")
        frame = con.execute(
            "SELECT * FROM read_parquet(?) WHERE snapshot_date >= ? ORDER BY customer_id, snapshot_date",
            [files, pd.Timestamp(since).to_pydatetime()]).df()
    return {"engine": engine, "rows": len(frame), "read_s": round(time.perf_counter() - began, 2),
            "peak_gib": round(peak_gib(), 2)}


# ---------------------------------------------------------------------------- parents

def known_at(frame: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """The simulator's rows as a source publishes them on ``as_of``: snapshots up to then,
    with a label flip that happens later not yet visible (label 0, updated_at = snapshot)."""
    rows = frame[frame["snapshot_date"] <= as_of].copy()
    later = rows["updated_at"] > as_of
    rows.loc[later, "churned_within_28d"] = 0
    rows.loc[later, "updated_at"] = rows.loc[later, "snapshot_date"]
    return rows


def weekly(work: Path, customers: int, sizes: list[int], legacy_sizes: list[int], rounds: int,
           baseline_rev: str = "HEAD", windows: tuple[int, ...] = (12,)) -> list[dict]:
    from churn_assets.sources.simulation import SimulatorSettings, simulate
    from churn_assets.storage.history import CustomerHistory

    t = time.perf_counter()
    full = simulate(SimulatorSettings(n_customers=customers), START + pd.Timedelta(weeks=max(sizes)))
    print(f"simulated {len(full):,} rows in {time.perf_counter() - t:.0f} s", flush=True)
    legacy_module = work / "history_head.py"
    legacy_module.write_text(subprocess.run(["git", "show", f"{baseline_rev}:churn_assets/storage/history.py"],
                                            cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    cases = []
    for weeks in sizes:
        before, as_of = START + pd.Timedelta(weeks=weeks - 1), START + pd.Timedelta(weeks=weeks)
        stored = known_at(full, before)
        batch = full[(full["updated_at"] > before) & (full["updated_at"] <= as_of)]
        batch_path = work / f"batch-{weeks}.parquet"
        batch.to_parquet(batch_path, index=False)
        seed = work / f"seed-{weeks}"
        for part in range(0, weeks, 10):  # build the history ten weeks at a time
            lo, hi = START + pd.Timedelta(weeks=part), START + pd.Timedelta(weeks=part + 10)
            CustomerHistory(seed).upsert(stored[(stored["snapshot_date"] >= lo)
                                                & (stored["snapshot_date"] < hi)], KEYS)
        cases += [("weekly", weeks, seed, batch_path, as_of, window) for window in windows]
        if weeks in legacy_sizes and "weeks_dir" in legacy_module.read_text():
            cases.append((f"baseline {baseline_rev}", weeks, seed, batch_path, as_of, windows[0]))
        elif weeks in legacy_sizes:
            old = work / f"seed-legacy-{weeks}"
            old.mkdir()
            stored.sort_values(KEYS, kind="stable").to_parquet(old / "customers.parquet", index=False)
            cases.append((f"baseline {baseline_rev}", weeks, old, batch_path, as_of, windows[0]))
        print(f"  history of {weeks} weeks: {len(stored):,} rows, batch {len(batch):,}", flush=True)
    del full
    results = []
    for round_ in range(rounds):
        for layout, weeks, seed, batch_path, as_of, window in cases:
            home = work / "run"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(seed, home)
            result = child("weekly", str(home), str(batch_path), str(as_of.date()),
                           str(legacy_module) if layout.startswith("baseline") else "", str(window))
            result.update(layout=layout, weeks=weeks, window_weeks=window, round=round_ + 1,
                          loadavg=os.getloadavg())
            results.append(result)
            print("  ", json.dumps(result), flush=True)
    return results


def tiled(base: pd.DataFrame, copies: int) -> pd.DataFrame:
    """``copies`` copies of a simulated history under renamed customer ids."""
    parts = []
    for copy in range(copies):
        part = base.copy()
        part["customer_id"] = f"T{copy:02d}" + part["customer_id"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def big(work: Path, windows: list[int], train_up_to: int, per_million: int,
        chunk_rows: list[int]) -> list[dict]:
    from churn_assets.sources.simulation import SimulatorSettings, simulate

    # 18 weeks of history: 12 training + 2 holdout weeks with final labels, the weeks
    # inside the 28-day horizon after them, and the one-week margin. Larger windows tile
    # one simulated base with renamed customers (simulating 16 M rows would take long).
    as_of = START + pd.Timedelta(weeks=18)
    base = simulate(SimulatorSettings(n_customers=per_million), as_of)
    results = []
    for millions in windows:
        batch = tiled(base, millions)
        path = work / f"big-{millions}.parquet"
        batch.to_parquet(path, index=False)
        rows = len(batch)
        del batch
        for chunks in chunk_rows:  # side by side: chunked and one-shot
            home = work / f"big-home-{millions}"
            result = child("big", str(path), str(home), str(as_of.date()),
                           "train" if millions <= train_up_to else "", str(chunks))
            result.update(window_millions=millions, batch_rows=rows, chunk_rows=chunks,
                          loadavg=os.getloadavg())
            results.append(result)
            print("  ", json.dumps(result), flush=True)
            shutil.rmtree(home)
            shutil.rmtree(f"{home}-io")
        path.unlink()
    return results


def threads(work: Path, customers: int, rounds: int) -> list[dict]:
    from churn_assets.sources.simulation import SimulatorSettings, simulate

    data = work / "threads.parquet"
    frame = simulate(SimulatorSettings(n_customers=customers), START + pd.Timedelta(weeks=18))
    frame.to_parquet(data, index=False)
    results = []
    for round_ in range(rounds):
        for contended in (False, True):
            for budget in ("none", "1"):
                hog = None
                if contended:  # one busy process: half of this 2-core machine taken
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    # No OMP_NUM_THREADS: "none" is scikit-learn's own default (all CPUs).
                    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
                    result = child("threads", str(data), budget, env=env)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                result.update(contended=contended, budget=budget, round=round_ + 1,
                              loadavg=os.getloadavg()[0])
                results.append(result)
                print("  ", json.dumps(result), flush=True)
    return results


def engines(work: Path, rounds: int) -> list[dict]:
    from churn_assets.sources.simulation import SimulatorSettings, simulate
    from churn_assets.storage.history import CustomerHistory

    home = work / "engines"
    as_of = START + pd.Timedelta(weeks=20)
    CustomerHistory(home).upsert(simulate(SimulatorSettings(n_customers=100_000), as_of), KEYS)
    since = str((as_of - pd.Timedelta(weeks=16)).date())
    results = []
    for round_ in range(rounds):
        for engine in ("pyarrow", "duckdb"):
            try:
                result = child("engine", str(home), since, engine)
            except SystemExit as exc:
                print(f"  {engine} skipped: {str(exc)[-200:]}")
                continue
            result["round"] = round_ + 1
            results.append(result)
            print("  ", json.dumps(result), flush=True)
    return results


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, args = sys.argv[2], sys.argv[3:]
        run = {"weekly": run_weekly, "big": run_big, "threads": run_threads, "engine": run_engine}[mode]
        print(json.dumps(run(*args)))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="weekly,big,threads,engines")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--weeks", default="10,20,40,80")
    parser.add_argument("--legacy-weeks", default="10,20",
                        help="history sizes also run with history.py of --baseline-rev")
    parser.add_argument("--baseline-rev", default="HEAD",
                        help="git revision of the baseline history.py (da0afe3: single-file layout)")
    parser.add_argument("--window-weeks", default="12",
                        help="weekly: training windows to run at every history size (5: one that 10 weeks fill)")
    parser.add_argument("--windows", default="1,3,10", help="training-window sizes, millions of rows")
    parser.add_argument("--train-up-to", type=int, default=1, help="also train at windows up to N M rows")
    parser.add_argument("--chunk-rows", default="1000000,0",
                        help="validation chunk sizes to run side by side (0: the batch in one frame)")
    parser.add_argument("--thread-customers", type=int, default=10_000)
    parser.add_argument("--customers-per-million", type=int, default=84_000,
                        help="simulated customers whose 12-week window holds ~1 M rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--thread-rounds", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="churn-scale-"))
    parts = args.parts.split(",")
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(),
           "affinity": len(os.sched_getaffinity(0)), "loadavg_start": os.getloadavg()}
    try:
        if "engines" in parts:
            print("engines", flush=True)
            out["engines"] = engines(work, args.rounds)
        if "weekly" in parts:
            print("weekly", flush=True)
            out["weekly"] = weekly(work, args.customers, [int(w) for w in args.weeks.split(",")],
                                   [int(w) for w in args.legacy_weeks.split(",") if w], args.rounds,
                                   args.baseline_rev, tuple(int(w) for w in args.window_weeks.split(",")))
        if "threads" in parts:
            print("threads", flush=True)
            out["threads"] = threads(work, args.thread_customers, args.thread_rounds)
        if "big" in parts:
            print("big", flush=True)
            out["big"] = big(work, [int(w) for w in args.windows.split(",")], args.train_up_to,
                             args.customers_per_million, [int(c) for c in args.chunk_rows.split(",")])
    finally:
        out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        out["loadavg_end"] = os.getloadavg()
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
