"""Ingestion benchmark: records/s and peak memory of the HTTP and SQL sources.

    python bench/ingest.py                       # 100k and 1M records, both sources
    python bench/ingest.py --sizes 100000        # quicker

For each size the simulator's rows (customers x weekly snapshots) are served by
``churn-assets demo-api`` in its own process (so the server's memory is not counted)
and written to a SQLite file; each measurement runs in a fresh child process, which
reports its own peak RSS (``VmHWM``) and its RSS after imports (the baseline).

Two ways to consume a source:
- ``stream``: ``HttpSource.iter_pages`` / ``SqlSource.iter_chunks``, each page written to
  its own Parquet part and dropped; peak memory over baseline should stay flat as the
  record count grows.
- ``fetch``: ``fetch()`` into one DataFrame, as the ``raw_customers`` asset does today;
  its peak grows with the batch (the DataFrame itself), which this shows honestly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START = "2026-01-05"
AS_OF = "2026-05-18"  # 20 weekly snapshots
# Rows per simulated customer over those 20 weeks: churn ends some customers' rows,
# weekly signups add customers (measured: 127,566 rows from 6,494 customers).
ROWS_PER_CUSTOMER = 19.6


def proc_status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that
    over from the parent across fork + exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, target: str, mode: str, page_size: int, out_dir: str) -> dict:
    """Runs in a child process: consume one source once, report speed and memory."""
    from churn_assets.core.spec import load_spec
    from churn_assets.sources.http import HttpSource
    from churn_assets.sources.sql import SqlSource

    spec = load_spec("simulator")
    if kind == "http":
        source = HttpSource(base_url=target, page_size=page_size, read_timeout=120)
        pages = lambda: (frame for frame, _ in source.iter_pages(spec, None))  # noqa: E731
    else:
        source = SqlSource(url=target, table="customers", chunk_size=page_size)
        pages = lambda: source.iter_chunks(spec, None)  # noqa: E731
    baseline = proc_status_mb("VmRSS")
    started = time.perf_counter()
    if mode == "stream":
        records = 0
        for number, frame in enumerate(pages()):
            frame.to_parquet(Path(out_dir) / f"part-{number:05d}.parquet", index=False)
            records += len(frame)
    else:
        records = len(source.fetch(spec, None).records)
    seconds = time.perf_counter() - started
    peak = proc_status_mb("VmHWM")
    return {"source": kind, "mode": mode, "records": records, "seconds": round(seconds, 2),
            "records_per_s": round(records / seconds), "baseline_rss_mb": round(baseline),
            "peak_rss_mb": round(peak), "peak_over_baseline_mb": round(peak - baseline)}


def run_child(*args: str) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        done = subprocess.run([sys.executable, __file__, "_measure", *args, out_dir],
                              capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_demo_api(customers: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "churn_assets.cli", "demo-api", "--no-auth", "--port", "0",
         "--customers", str(customers), "--start-date", START, "--as-of", AS_OF],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    banner = proc.stdout.readline()
    if " on " not in banner:
        proc.kill()
        raise RuntimeError(f"demo-api did not start: {banner!r}")
    return proc, banner.split(" on ")[1].split()[0]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def write_sqlite(customers: int, path: Path) -> int:
    import sqlalchemy as sa

    from churn_assets.sources.simulation import SimulatorSettings, simulate

    frame = simulate(SimulatorSettings(n_customers=customers, start_date=START), AS_OF)
    engine = sa.create_engine(f"sqlite:///{path}")
    frame.to_sql("customers", engine, if_exists="replace", index=False, chunksize=50_000)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX customers_updated_at ON customers (updated_at)")
    engine.dispose()
    return len(frame)


def bench(sizes: list[int], page_size: int, chunk_size: int) -> list[dict]:
    rows = []
    for size in sizes:
        customers = max(1, round(size / ROWS_PER_CUSTOMER))
        server, url = start_demo_api(customers)
        try:
            for mode in ("stream", "fetch"):
                rows.append({"target": size, **run_child("http", url, mode, str(page_size))})
                print(rows[-1], flush=True)
        finally:
            stop(server)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "crm.db"
            write_sqlite(customers, db)
            for mode in ("stream", "fetch"):
                rows.append({"target": size, **run_child("sql", f"sqlite:///{db}", mode, str(chunk_size))})
                print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], command: str, page_size: int, chunk_size: int) -> str:
    lines = [
        "## Ingestion", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" {platform.platform()} (shared with other jobs while measured)",
        f"- command: `{command}`",
        f"- HTTP: `churn-assets demo-api` in its own process on loopback, JSON pages of"
        f" {page_size:,} records; SQL: a SQLite file (index on updated_at), {chunk_size:,} rows a chunk.",
        "- stream = pages written one by one to Parquet parts; fetch = `fetch()` into one"
        " DataFrame (what `raw_customers` does). Memory: the client process only.", "",
        "| source | mode | records | seconds | records/s | peak RSS MB | peak over baseline MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['source']} | {r['mode']} | {r['records']:,} | {r['seconds']} |"
                     f" {r['records_per_s']:,} | {r['peak_rss_mb']} | {r['peak_over_baseline_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        kind, target, mode, page, out_dir = sys.argv[2:7]
        print(json.dumps(measure(kind, target, mode, int(page), out_dir)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    ns = parser.parse_args()
    rows = bench(ns.sizes, ns.page_size, ns.chunk_size)
    text = markdown(rows, "python " + " ".join(["bench/ingest.py", *sys.argv[1:]]),
                    ns.page_size, ns.chunk_size)
    print(text)
    if ns.write:
        path = REPO / "BENCHMARKS.md"
        existing = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(existing.rstrip("\n") + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
