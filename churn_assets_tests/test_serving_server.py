"""A real `churn-assets serve` (two uvicorn workers) on loopback follows promotions and
rollbacks under load: no failed request, and every answer computed by the version it names."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pandas as pd
import pytest

from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    SPEC, ServerProcess, http_json, registry, registry_template, trained, wait_for)

TOKEN = "load-test-token-0123456789"
RECORD = {"customer_id": "C9", "age": 52, "tenure_days": 40.0, "seats": 1, "monthly_spend": 29.0,
          "sessions_last_30d": 2, "orders_last_30d": 0, "days_since_last_order": 61,
          "support_tickets_last_90d": 4, "discount_share": 0.3, "country": "DE", "plan": "basic",
          "payment_method": "cash on delivery", "acquisition_channel": "paid search"}


class LoadLoop:
    """Threads posting RECORD over keep-alive connections, recording every answer."""

    def __init__(self, port: int, threads: int = 4):
        self.port = port
        self.stop = threading.Event()
        self.answers: list[tuple[int, str | None, float | None]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        body = json.dumps(RECORD).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/predict", body=body, headers=headers)
                response = conn.getresponse()
                payload = json.loads(response.read())
                answer = (response.status, payload.get("model_version"), payload.get("churn_probability"))
            except Exception as exc:  # a failed request is exactly what this test hunts for
                with self.lock:
                    self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            with self.lock:
                self.answers.append(answer)
        conn.close()

    def versions_since(self, start: int) -> set:
        with self.lock:
            return {version for _, version, _ in self.answers[start:]}

    def __len__(self) -> int:
        with self.lock:
            return len(self.answers)


@pytest.fixture
def server(registry, tmp_path):
    registry.promote("v0001", "test")
    process = ServerProcess(registry.root, tmp_path / "server.log", workers=2, env={"CHURN_ASSETS_API_TOKEN": TOKEN})
    try:
        process.wait_healthy()
        yield process
    finally:
        process.stop()
        assert process.process.poll() is not None


def switch_and_wait(load: LoadLoop, version: str) -> None:
    """Wait until the load loop sees only ``version`` (both workers switched)."""
    def settled():
        mark = len(load)
        time.sleep(0.3)
        return len(load) > mark and load.versions_since(mark) == {version}
    wait_for(settled, timeout=15, interval=0.01, what=f"all workers serving {version}")


def test_promotion_and_rollback_under_load_fail_no_request(server, registry, trained):
    frame = pd.DataFrame([RECORD]).reindex(columns=SPEC.feature_columns)
    expected = {v: trained[i].predict_proba(frame)[0] for i, v in enumerate(["v0001", "v0002", "v0003"])}
    assert len(set(expected.values())) == 3  # the versions really answer differently
    status, body = http_json(server.port, "POST", "/predict", RECORD)
    assert status == 401 and body["detail"][0]["field"] == "Authorization"
    load = LoadLoop(server.port)
    for thread in load.threads:
        thread.start()
    try:
        switch_and_wait(load, "v0001")
        registry.promote("v0002", "promotion under load")
        switch_and_wait(load, "v0002")
        registry.promote("v0003", "promotion under load")
        switch_and_wait(load, "v0003")
        registry.rollback()
        switch_and_wait(load, "v0002")
        registry.rollback(to="v0001")
        switch_and_wait(load, "v0001")
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=15)
    assert load.errors == []
    assert len(load) > 200
    assert {status for status, _, _ in load.answers} == {200}
    # No mixing: each answer's probability is the one its named version computes.
    for _, version, probability in load.answers:
        assert probability == pytest.approx(expected[version], abs=1e-9), version
    seen = [version for _, version, _ in load.answers]
    assert {"v0001", "v0002", "v0003"} <= set(seen)


def test_the_token_never_reaches_the_log(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert http_json(server.port, "POST", "/predict", RECORD, headers=headers)[0] == 200
    assert http_json(server.port, "POST", "/predict", RECORD,
                     headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
    assert http_json(server.port, "GET", "/ready")[1]["model_version"] == "v0001"
    assert server.stop(), "SIGTERM alone should stop the server, even when started with it ignored"
    log = server.log_path.read_text()
    assert "now serving v0001" in log  # the log is really captured
    assert TOKEN not in log
