"""Slow bodies at the open-files limit: a real server whose descriptors run out.

The report: with ``ulimit -n 1024`` (hard, so ``serve`` cannot raise it) and 1,100
clients that send complete headers for POST /predict and then a byte of a 1 MB body,
healthy requests failed until the 30 s body deadline. Here the same, scaled down: a
hard limit of 256 descriptors and 300 such clients, with the default deadlines.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from churn_assets.serving.fd_budget import DescriptorBudget
from churn_assets_tests.serving_support import (  # noqa: F401  (fixtures)
    HealthyClients, ServerProcess, SlowClients, http_json, registry, registry_template, trained, wait_for)
from churn_assets_tests.test_serving_api import GOOD

FD_LIMIT = 256
SLOW_BODIES = 300  # more than the server has descriptors
POOL = 8  # keep-alive healthy connections opened once the server is out of descriptors
BACK_WITHIN = 10.0  # seconds after the attack by which healthy clients must be served again
WATCH = 14.0  # seconds after the attack that healthy clients are measured


@pytest.fixture
def deployed(registry):
    registry.promote("v0001", "test")
    return registry


def server_fd_limits(pid: int) -> tuple[int, int]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/<pid>/limits")


def test_slow_bodies_at_the_descriptor_limit_are_shed_and_healthy_clients_come_back(deployed, tmp_path):
    server = ServerProcess(deployed.root, tmp_path / "server.log", workers=1,
                           fd_soft_limit=FD_LIMIT, fd_hard_limit=FD_LIMIT)
    slow = None
    try:
        server.wait_healthy()
        wait_for(lambda: http_json(server.port, "GET", "/ready")[0] == 200, what="the model loaded")
        assert server_fd_limits(server.process.pid) == (FD_LIMIT, FD_LIMIT)  # serve could not raise it
        # Headers complete, one body byte, then a byte a second: each holds a descriptor
        # until the 30 s body deadline unless the server sheds it.
        slow = SlowClients(server.port, {"slow_body": SLOW_BODIES}, tick=1.0, limit=WATCH + 10).start()
        attack = slow.started
        time.sleep(1.0)  # the server is out of descriptors now
        with HealthyClients(server.port, GOOD, threads=POOL) as pool, \
                HealthyClients(server.port, GOOD, threads=2, fresh_connections=True) as fresh:
            time.sleep(max(0.0, attack + WATCH - time.monotonic()))
        try:
            ready = http_json(server.port, "GET", "/ready")
        except OSError as exc:  # reset: no descriptor left to accept it
            ready = (type(exc).__name__, None)
    finally:
        if slow is not None:
            slow.close()
        assert server.stop()

    # Every keep-alive healthy connection opened during the attack was answered in time.
    first_answer = defaultdict(lambda: float("inf"))
    for thread, started, seconds, status in pool.events:
        if status == 200:
            first_answer[thread] = min(first_answer[thread], started + seconds - attack)
    late = {t: first_answer[t] for t in range(POOL) if first_answer[t] > BACK_WITHIN}
    assert not late, f"healthy connections first answered after (s): {late}"
    # From then on, every healthy request succeeds, new connections and kept-alive ones.
    for clients, name in ((pool, "keep-alive"), (fresh, "new-connection")):
        after = [status for _, started, _, status in clients.events if started - attack >= BACK_WITHIN]
        failed = [s for s in after if s != 200]
        assert len(after) >= 20 and not failed, (name, len(after), sorted(set(map(str, failed)))[:5])
    # The registry stayed readable (a full descriptor table also breaks the model's poll).
    assert ready[0] == 200 and ready[1]["degraded"] is False, ready
    # Only slow senders were closed, with a 503 that says why, and only as many as needed.
    shed = [c for c in slow.of("slow_body") if c["received"].startswith(b"HTTP/1.1 503")]
    assert shed, "no slow connection was shed"
    assert all(b"retry-after: 1" in c["received"].lower() and b"slowest" in c["received"] for c in shed)
    still_open = sum(c["closed_after"] is None for c in slow.of("slow_body"))
    assert still_open >= FD_LIMIT // 2, (still_open, len(shed))
    assert "file descriptors low" in (tmp_path / "server.log").read_text()


# -- the budget's choice, without a server ----------------------------------------------------

class FakeTransport:
    closing = False

    def is_closing(self) -> bool:
        return self.closing


class Conn:
    """A connection as the budget sees it: its rank (None: never shed) and whether it was shed."""

    def __init__(self, rank: float | None = None, judged_from: float = 0.0):
        self.rank, self.judged_from = rank, judged_from
        self.transport = FakeTransport()

    def shed_rank(self, now: float, grace: float):
        return self.rank if now >= self.judged_from else None

    def shed(self) -> None:
        self.transport.closing = True


class FakeLoop:
    def __init__(self):
        self.now, self.later = 100.0, []

    def time(self) -> float:
        return self.now

    def call_later(self, delay, callback, *args):
        self.later.append((self.now + delay, callback, args))
        return object()


def test_the_budget_sheds_the_lowest_ranked_until_twice_the_spare_is_free():
    loop = FakeLoop()
    OTHER = 6
    conns = [Conn(None) for _ in range(8)]  # answered, idle, or bodies that will make it
    budget = DescriptorBudget(limit=20, spare=4, grace=1.0,
                              count_open=lambda: OTHER + sum(not c.transport.closing for c in conns))
    assert budget.check(conns, loop) == 0  # 14 of 20 used: nothing to do
    trickles = [Conn(0.5), Conn(0.1), Conn(2.0)]
    young = [Conn(0.0, judged_from=101.0) for _ in range(3)]  # not judged before t = 101
    conns += trickles + young
    # 20 used >= 20 - 4: shed down to 20 - 2 * 4 = 12, i.e. 8, but only 3 can be judged.
    assert budget.check(conns, loop) == 3
    assert all(c.transport.closing for c in trickles) and not any(c.transport.closing for c in young)
    assert not any(c.transport.closing for c in conns[:8])  # never the unranked
    assert budget.shed_total == 3 and len(loop.later) == 1  # it will look again
    # Half a grace later the young ones can be judged; 17 used is still too many.
    loop.now, (when, callback, args) = 101.0, loop.later.pop()
    assert when == 100.5
    callback(*args)
    assert all(c.transport.closing for c in young) and budget.shed_total == 6
    # 14 used: below the alarm, so the next look sheds nothing even though 12 was the aim.
    (_, callback, args) = loop.later.pop()
    callback(*args)
    assert budget.shed_total == 6 and not loop.later


def test_the_budget_keeps_its_last_count_when_no_descriptor_is_left_to_count_with():
    loop = FakeLoop()
    counts = iter([10, None])
    budget = DescriptorBudget(limit=100, spare=10, count_open=lambda: next(counts))
    conns = [Conn(None) for _ in range(5)]
    assert budget.check(conns, loop) == 0 and budget.other == 5
    conns += [Conn(1.0) for _ in range(85)]  # 95 used: under pressure; /proc/self/fd fails
    assert budget.check(conns, loop) == 15  # down to 100 - 2 * 10, with the other 5 as last counted
    assert budget.other == 5


# -- how the HTTP protocol ranks its connections ----------------------------------------------

class RecordingTransport:
    """Enough of an asyncio transport for uvicorn's protocol; records what is written."""

    def __init__(self):
        self.written, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_the_protocol_offers_slow_requests_and_keeps_bodies_that_will_arrive_in_time():
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from churn_assets.serving.guard import GuardedHttpToolsProtocol

    async def app(scope, receive, send):  # never runs: the loop is not started
        raise AssertionError("not reached")

    loop = asyncio.new_event_loop()
    config = Config(app=app, http=GuardedHttpToolsProtocol, log_config=None)
    state = ServerState()

    def connect(*chunks: bytes) -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
        protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={}, _loop=loop)
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for chunk in chunks:
            protocol.data_received(chunk)
        return protocol, transport

    headers = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    partial = b"POST /predict HTTP/1.1\r\nHost: t\r\n"  # and then nothing
    try:
        trickle, trickle_transport = connect(headers + b"{")
        upload, _ = connect(headers + b"[" + b" " * 399_999)  # 400 kB so far of 1 MB
        headers_only, _ = connect(partial)
        answered, _ = connect(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        now = loop.time()
        # Too soon to judge anyone.
        assert [p.shed_rank(now + 0.5, 1.0) for p in (trickle, upload, headers_only)] == [None] * 3
        later = now + 2.0
        assert trickle.shed_rank(later, 1.0) == pytest.approx(0.5, rel=0.05)  # 1 byte in 2 s
        assert upload.shed_rank(later, 1.0) is None  # 200 kB/s: the rest arrives in 3 s of the 28 left
        assert headers_only.shed_rank(later, 1.0) == pytest.approx(len(partial) / 2, rel=0.05)
        assert answered.shed_rank(later, 1.0) is None  # its request is in: being answered
        trickle.shed()
        assert trickle_transport.closed
        assert trickle_transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"retry-after: 1" in trickle_transport.written and b"slowest" in trickle_transport.written
        assert trickle.shed_rank(later, 1.0) is None  # closing: not offered again
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
