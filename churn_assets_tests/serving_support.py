"""Shared fixtures of the serving tests: real trained models, registries, a real server."""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churn_assets.storage.registry import ModelRegistry
from churn_assets.devtools.sample_models import register, sample_frames, train_family
from churn_assets.sources.simulation import SimulatorSettings, simulate
from churn_assets.core.spec import load_spec

SPEC = load_spec("simulator")


@pytest.fixture(scope="session")
def trained():
    """Real predictors trained like the churn_model asset: v1 LR, v2 HGB, v3 LR on other data."""
    return trained_predictors()


@functools.cache
def trained_predictors():
    # Cached here, not only by the fixture: each test module imports the fixture, and
    # pytest would build a session fixture once per module that defines it.
    frames = sample_frames(n_customers=600)
    return [train_family(frames, "logistic_regression"),
            train_family(frames, "hist_gradient_boosting"),
            train_family(sample_frames(n_customers=300), "logistic_regression")]


@pytest.fixture(scope="session")
def registry_template(trained, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry-template") / "registry"
    registry = ModelRegistry(root)
    for predictor in trained:
        register(registry, predictor)
    return root


@pytest.fixture
def registry(registry_template, tmp_path) -> ModelRegistry:
    """Three registered versions, none in production yet (each test gets its own copy)."""
    root = tmp_path / "registry"
    shutil.copytree(registry_template, root)
    return ModelRegistry(root)


def messy_records(n_customers: int = 400, seed: int = 11) -> pd.DataFrame:
    """Fresh simulator rows (another seed than training) made harder: unknown categories,
    odd spellings, blanks and missing values in every feature."""
    raw = simulate(SimulatorSettings(n_customers=n_customers, seed=seed), "2026-03-02")
    frame = raw[[SPEC.id_column, *SPEC.feature_columns]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    n = len(frame)
    for column in SPEC.numeric_features:
        frame.loc[rng.random(n) < 0.04, column] = np.nan
    for column in SPEC.categorical_features:
        frame[column] = frame[column].astype(object)
        frame.loc[rng.random(n) < 0.04, column] = None
        frame.loc[rng.random(n) < 0.04, column] = "Never Seen Before"
        frame.loc[rng.random(n) < 0.02, column] = "   "
        frame.loc[rng.random(n) < 0.02, column] = "__MISSING__"
    frame.loc[rng.random(n) < 0.05, "country"] = "  united STATES "
    frame.loc[rng.random(n) < 0.05, "payment_method"] = "Pay Pal"
    return frame


def as_json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts; NaN/None become left-out fields (every other row) or null."""
    records = []
    for i, row in enumerate(frame.to_dict(orient="records")):
        out = {}
        for key, value in row.items():
            if value is None or (isinstance(value, float) and np.isnan(value)):
                if i % 2:
                    continue
                value = None
            out[key] = value
        records.append(out)
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(port: int, method: str, path: str, body: object = None, headers: dict | None = None,
              timeout: float = 10) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def wait_for(condition, timeout: float = 20, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ServerProcess:
    """``churn-assets serve`` in its own process group, stopped for sure by ``stop``."""

    def __init__(self, registry_root: Path, log_path: Path, workers: int = 2, env: dict | None = None,
                 poll_seconds: float = 0.2):
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "churn_assets.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--registry", str(registry_root),
                   "--poll-seconds", str(poll_seconds)]
        self.log_file = open(log_path, "wb")
        # Started with SIGTERM ignored, as processes here may be: the server must cope.
        self.process = subprocess.Popen(
            command, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))

    def wait_healthy(self, timeout: float = 30) -> None:
        def healthy():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                return http_json(self.port, "GET", "/health", timeout=1)[0] == 200
            except OSError:
                return False
        wait_for(healthy, timeout, 0.1, "the server to answer /health")

    def stop(self) -> bool:
        """Terminate, wait, then kill the whole group; True if SIGTERM alone sufficed."""
        graceful = True
        try:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                graceful = False
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # workers too, whatever happened
            except ProcessLookupError:
                pass
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self.log_file.close()
        return graceful
