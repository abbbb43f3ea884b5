"""Shared pieces of the ingestion tests: a real demo API on loopback, a pipeline runner,
a fingerprint of everything a failed run must leave alone, and reliable process stops."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import dagster as dg

from churn_assets.defs.alerts import failure_reason
from churn_assets.devtools.demo_api import CustomerApi, DemoApiServer, start_in_thread
from churn_assets.sources.simulation import SimulatorSettings
from churn_assets.sources.base import CustomerSource
from churn_assets.sources.http import HttpSource
from churn_assets_tests.conftest import guarded_state, run_graph  # noqa: F401 (re-exported)

TOKEN_ENV = "CHURN_ASSETS_API_TOKEN"
TOKEN = "tok-" + secrets.token_hex(12)  # fresh per session: a leak cannot hide behind a fixed string
FIRST_WEEK = "2026-05-04"  # enough labelled weeks for the 12 + 2 + 2 week plan
NEXT_WEEK = "2026-05-11"
CUSTOMERS = 800
# One model family keeps a full refresh near two seconds; the choice of family is not
# what these tests are about.
FAST_TRAINING = {"ops": {"churn_model": {"config": {"families": ["logistic_regression"]}}}}


def start_demo_api(as_of: str = FIRST_WEEK, token: str = TOKEN) -> DemoApiServer:
    api = CustomerApi(SimulatorSettings(n_customers=CUSTOMERS), as_of, token=token)
    return start_in_thread(api)


def http_source(server: DemoApiServer | str, **options) -> HttpSource:
    """An HttpSource for a demo API (server or URL), its token read from ``TOKEN_ENV``."""
    options.setdefault("page_size", 2000)
    options.setdefault("backoff_factor", 0.1)
    options.setdefault("base_url", server if isinstance(server, str) else server.url)
    return HttpSource(token_env=TOKEN_ENV, **options)


def run_refresh(home: Path, source: CustomerSource,
                instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    return run_graph(home, source, instance=instance or dg.DagsterInstance.ephemeral(),
                     run_config=FAST_TRAINING)


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Failing step -> error message, with its causes (the last attempt's)."""
    return {e.step_key: failure_reason(e.event_specific_data.error)
            for e in result.all_events if e.event_type_value == "STEP_FAILURE"}


def copy_home(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate, wait, then kill: processes here may start with SIGTERM ignored."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
