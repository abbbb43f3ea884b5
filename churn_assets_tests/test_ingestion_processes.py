"""Whole processes: ``churn-assets demo-api`` as a user starts it, and a refresh killed with
SIGKILL between fetching and storing."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import requests

from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.core.spec import load_spec
from churn_assets_tests.ingestion_support import (FIRST_WEEK, NEXT_WEEK, TOKEN, TOKEN_ENV,
                                                  guarded_state, http_source, run_refresh,
                                                  start_demo_api, step_failures, stop_process)

REPO = Path(__file__).resolve().parents[1]


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no output within {timeout}s") from None


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as some process managers here start us


def test_demo_api_command_serves_the_contract_and_stops_on_sigterm(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    command = [sys.executable, "-m", "churn_assets.cli", "demo-api", "--port", "0",
               "--customers", "300", "--as-of", FIRST_WEEK]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ignore_sigterm, cwd=REPO)
    try:
        banner = first_line(proc, timeout=60)
        assert "demo customer API on http://127.0.0.1:" in banner, banner + proc.stderr.read()
        url = banner.split(" on ")[1].split()[0]
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        assert requests.get(url + "/v1/customers", timeout=5).status_code == 401
        source = http_source(url, page_size=700)
        batch = source.fetch(load_spec("simulator"), None)
        expected = simulate(SimulatorSettings(n_customers=300), FIRST_WEEK)
        assert len(batch.records) == len(expected)
        assert set(batch.records["customer_id"]) == set(expected["customer_id"])
        proc.terminate()  # SIGTERM was ignored at start; the server installs its own handler
        assert proc.wait(timeout=10) == 0
        assert TOKEN not in proc.stderr.read()
    finally:
        stop_process(proc)


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import dagster as dg
    from churn_assets.sources.http import HttpSource
    from churn_assets_tests.ingestion_support import TOKEN_ENV, run_refresh
    source = HttpSource(base_url=sys.argv[2], token_env=TOKEN_ENV, page_size=200,
                        read_timeout=300)
    run_refresh(Path(sys.argv[1]), source)
""")


def test_sigkill_between_fetch_and_store_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    home = tmp_path / "home"
    server = start_demo_api(FIRST_WEEK)
    try:
        assert run_refresh(home, http_source(server)).success
        before = guarded_state(home)
        server.api.as_of = NEXT_WEEK
        server.api.requests.clear()
        # Page 1 arrives; page 2 hangs, so the child is mid-fetch with records in memory.
        server.api.faults.queue[:] = ["ok", "stall"]
        server.api.faults.stall_seconds = 300
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), server.url], cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 90
            while len(server.api.requests) < 2 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.05)
            assert [outcome for _, outcome in server.api.requests] == [200, "stall"]
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=10) == -signal.SIGKILL
        finally:
            stop_process(child)
        assert guarded_state(home) == before  # nothing half-stored, watermark not moved

        server.api.faults.queue.clear()
        result = run_refresh(home, http_source(server, page_size=200))
        assert result.success, step_failures(result)
        history = pd.read_parquet(home / "history" / "weeks")
        expected = server.api.frame(NEXT_WEEK)
        keys = ["customer_id", "snapshot_date"]
        assert not history.duplicated(keys).any()
        assert len(history) == len(expected)
        assert set(history["customer_id"]) == set(expected["customer_id"])
    finally:
        server.stop()
