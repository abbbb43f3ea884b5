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


def _server_preexec(fd_soft_limit: int | None, fd_hard_limit: int | None = None) -> None:
    # Started with SIGTERM ignored, as processes here may be: the server must cope.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if fd_soft_limit is not None:  # e.g. the common default of 1024, to reproduce fd exhaustion
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if fd_hard_limit is None else fd_hard_limit
        # A hard limit too (``ulimit -Hn``): then ``serve`` cannot raise the soft one.
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_soft_limit, hard))


class ServerProcess:
    """``churn-assets serve`` in its own process group, stopped for sure by ``stop``."""

    def __init__(self, registry_root: Path, log_path: Path, workers: int = 2, env: dict | None = None,
                 poll_seconds: float = 0.2, args: list[str] | None = None, fd_soft_limit: int | None = None,
                 fd_hard_limit: int | None = None):
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "churn_assets.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--registry", str(registry_root),
                   "--poll-seconds", str(poll_seconds), *(args or [])]
        self.log_file = open(log_path, "wb")
        self.process = subprocess.Popen(
            command, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})}, cwd=log_path.parent,  # not the repo: PYTHONPATH decides
            preexec_fn=lambda: _server_preexec(fd_soft_limit, fd_hard_limit))

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


SLOW_KINDS = {
    # kind: (what is sent at once, what is then trickled one byte per tick)
    "slow_body": (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000\r\n\r\n{", b" "),
    "slow_headers": (b"POST /predict HTTP/1.1\r\nHost: t\r\n", b"X"),
    "idle": (b"", b""),
    # FastAPI answers 405 without reading the body: only the protocol's backstop ends it.
    "slow_body_other_path": (b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n", b" "),
}


class SlowClients:
    """Raw loopback sockets that send part of a request and then one byte per ``tick``,
    all driven by one thread; records what each received and when the server closed it."""

    def __init__(self, port: int, counts: dict[str, int], tick: float = 0.5, limit: float = 60):
        import selectors
        import threading
        self.tick = tick
        self.limit = limit  # seconds after which the thread stops, whatever is still open
        self.selector = selectors.DefaultSelector()
        self.clients: list[dict] = []
        for kind, count in counts.items():
            opening, _ = SLOW_KINDS[kind]
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                client = {"kind": kind, "sock": sock, "received": b"", "closed_after": None}
                self.clients.append(client)
                try:
                    if opening:
                        sock.sendall(opening)
                except OSError:  # reset at once: a server out of descriptors accepts and closes
                    client["closed_after"] = 0.0
                    sock.close()
                    continue
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, client)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowClients:
        self.thread.start()
        return self

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick
        while any(c["closed_after"] is None for c in self.clients):
            now = time.monotonic()
            if now - self.started > self.limit or self.stopping.is_set():
                break
            if now >= next_tick:
                next_tick += self.tick
                for c in self.clients:
                    trickle = SLOW_KINDS[c["kind"]][1]
                    if c["closed_after"] is None and trickle:
                        try:
                            c["sock"].send(trickle)
                        except OSError:
                            pass  # closed by the server: the read side records when
            for key, _ in self.selector.select(timeout=max(0.0, min(0.05, next_tick - time.monotonic()))):
                c = key.data
                try:
                    data = c["sock"].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    c["received"] += data
                else:
                    c["closed_after"] = time.monotonic() - self.started
                    self.selector.unregister(c["sock"])
                    c["sock"].close()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for c in self.clients:
            if c["closed_after"] is None:
                try:
                    self.selector.unregister(c["sock"])
                except (KeyError, ValueError):
                    pass
                c["sock"].close()
        self.selector.close()

    def of(self, kind: str) -> list[dict]:
        return [c for c in self.clients if c["kind"] == kind]


class HealthyClients:
    """Threads posting one valid record over keep-alive connections, timing each answer."""

    def __init__(self, port: int, record: dict, threads: int = 2, headers: dict | None = None,
                 fresh_connections: bool = False):
        import threading
        self.port = port
        self.fresh = fresh_connections  # a new connection per request (needs accept() to work)
        self.body = json.dumps(record).encode()
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.events: list[tuple[int, float, float, int | str]] = []  # (thread, start, seconds, status)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            started = time.monotonic()
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=self.body, headers=self.headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if self.fresh:
                    conn.close()
            except Exception as exc:  # a failed request is what the callers look for
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            elapsed = time.perf_counter() - start
            with self.lock:
                self.events.append((index, started, elapsed, status))
                if status == 200:
                    self.latencies.append(elapsed)
                else:
                    self.failures.append(str(status))
        conn.close()

    def __enter__(self) -> HealthyClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def take(self) -> tuple[list[float], list[str]]:
        """The latencies and failures so far, and start afresh."""
        with self.lock:
            taken = self.latencies, self.failures
            self.latencies, self.failures = [], []
        return taken


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
