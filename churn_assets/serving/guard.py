"""uvicorn's httptools protocol with deadlines for the parts of a request uvicorn never times.

uvicorn times only the idle gap between two requests on a kept-alive connection. A
connection that never sends a request, or sends its headers one byte at a time, is
kept forever, and so is one whose body trickles in after the app answered without
reading it (401, 405, any FastAPI route). Each such connection costs a file
descriptor and a slot of ``limit_concurrency``, so a few hundred of them starve the
real clients. Here every connection is on a clock:

- header deadline: from the connection's start (or the first byte of a following
  request) to the end of the headers; then 408 and close;
- body backstop: from the end of the headers to the end of the body. POST /predict
  enforces its own, tighter body deadline in the ASGI front door (a JSON 408 naming
  what arrived); this one catches every other path, at ``body_timeout + BACKSTOP_GRACE``.

A single ``TimerHandle`` per connection, re-armed per phase: about a microsecond.

Deadlines alone do not help when the open-files limit is lower than the number of slow
clients: the table fills before any deadline, and accept() fails for everyone until
then. So each connection also reports to the worker's ``fd_budget.DescriptorBudget``,
which, when descriptors run low, closes the connections that send their request
slowest (503, ``Retry-After: 1``) and keeps room for new clients.

Settings come from the environment (``CHURN_ASSETS_SERVE_HEADER_TIMEOUT``,
``CHURN_ASSETS_SERVE_BODY_TIMEOUT``) because uvicorn builds the protocol itself, in each
worker process.
"""

from __future__ import annotations

import functools
import logging
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from churn_assets.serving.fd_budget import DescriptorBudget, soft_fd_limit

log = logging.getLogger("churn_assets.serving")
HEADER_TIMEOUT_ENV = "CHURN_ASSETS_SERVE_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "CHURN_ASSETS_SERVE_BODY_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
BACKSTOP_GRACE = 2.0  # the front door's 408 (with its JSON detail) must win on /predict
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s")
SHED_MESSAGE = (b'{"detail": [{"row": null, "field": null, "message": "the server is short of connections and'
                b' this request was arriving among the slowest; retry"}]}')
SHED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(SHED_MESSAGE), SHED_MESSAGE))


def seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        from churn_assets.settings import SettingsError  # a ValueError that the CLI prints as one line
        raise SettingsError(f"{name}={raw!r}: must be a number of seconds > 0")
    return value


@functools.cache  # read once per worker process, not per connection
def _limits() -> tuple[float, float]:
    return (seconds_from_env(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT),
            seconds_from_env(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT) + BACKSTOP_GRACE)


@functools.cache  # one per worker process: the open-files limit is per process
def descriptor_budget() -> DescriptorBudget | None:
    limit = soft_fd_limit()
    return None if limit is None else DescriptorBudget(limit)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a header deadline, a body backstop and shedding when the
    worker runs short of descriptors (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_backstop = _limits()
        self.budget = descriptor_budget()
        self._deadline = None  # the one pending TimerHandle of this connection
        self._phase = ""  # "headers" or "body" while a request is arriving, else ""
        self._phase_started = 0.0  # loop time
        self._received = 0  # bytes received in this phase
        self.body_deadline = self.body_backstop - BACKSTOP_GRACE  # the front door's, on /predict

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._phase_started = self.loop.time()
        self._received = 0
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(self.header_timeout, "headers")  # a connection that never sends a request
        if self.budget is not None:
            self.budget.check(self.connections, self.loop)

    # -- what the descriptor budget asks ------------------------------------------------
    def shed_rank(self, now: float, grace: float) -> float | None:
        """Bytes per second at which this request arrives, if it may be shed: None when
        no request is arriving (answered, being answered, idle between requests), when
        its phase is younger than ``grace`` (too soon to judge), or when it is a body
        that at this pace arrives before the deadline (a body that will make it stays)."""
        if not self._phase or self.transport.is_closing():
            return None
        age = now - self._phase_started
        if age < grace:
            return None
        rate = self._received / age
        expected = self._content_length() if self._phase == "body" else None
        if expected is not None:
            time_left = self._phase_started + self.body_deadline - now
            if expected - self._received <= rate * time_left:
                return None
        return rate

    def _content_length(self) -> int | None:
        # Read here, under pressure only, rather than for every request's headers.
        for name, value in self.headers or ():  # uvicorn lower-cases the names
            if name == b"content-length" and value.isdigit():
                return int(value)
        return None  # chunked: judged by its pace alone

    def shed(self) -> None:
        self._abort(SHED_RESPONSE)

    def data_received(self, data: bytes) -> None:
        if self._phase == "headers":
            self._received += len(data)
        super().data_received(data)

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
        super().on_body(body)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a following request; the first is timed since connect
            self._arm(self.header_timeout, "headers")

    def on_headers_complete(self) -> None:
        self._arm(self.body_backstop, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._phase = ""
        super().on_message_complete()

    def _expired(self) -> None:
        self._deadline = None
        message = f"request {self._phase} not received within the deadline".encode()
        # debug only: under a slow-client attack this would be one line per connection
        log.debug("closing %s: request %s not complete in time", self.client, self._phase)
        self._abort(TIMEOUT_RESPONSE % (len(message), message))

    def _abort(self, response: bytes) -> None:
        """Answer ``response`` if no answer of ours is under way, then close."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answer = False
        if self._phase == "headers":
            answer = cycle is None or cycle.response_complete  # no response of ours in progress
        elif cycle is not None and not cycle.response_complete:
            # The app is still waiting for the body (or answering): stop it from writing
            # after us, and wake it so that it sees a disconnect.
            answer = not cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
        # else: the app answered without reading the body, which still trickles in: close.
        if answer:
            self.transport.write(response)
        self.transport.close()
