"""``churn-assets demo-api``: the built-in simulator behind the documented customer API.

It lets a user run the whole HTTP ingestion path on one machine, and it is the server
the fault tests and the ingestion benchmark talk to. Faults are injected per request
from a queue, so a test can say "the next two requests answer 500" and watch the client
recover, or keep a fault up to watch it fail cleanly.

Standard library only (``ThreadingHTTPServer``): the demo has no dependency to install.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from churn_assets.sources.simulation import SimulatorSettings, simulate

log = logging.getLogger("churn_assets.devtools.demo_api")
FAULT_KINDS = ("ok", "500", "503", "429", "stall", "malformed", "truncate", "skip-page")
MAX_PAGE = 50_000


@dataclass
class Faults:
    """Faults for the next requests to ``/v1/customers`` (one queue entry each), and
    column changes applied to every page (a renamed or dropped column)."""

    queue: list[str] = field(default_factory=list)
    retry_after: int = 1
    stall_seconds: float = 30.0
    rename: dict[str, str] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.queue) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {list(FAULT_KINDS)}")


class CustomerApi:
    """The simulator's rows as the API serves them: sorted by (updated_at, id, snapshot)."""

    def __init__(self, settings: SimulatorSettings, as_of: str, token: str = "",
                 faults: Faults | None = None) -> None:
        self.settings = settings
        self.as_of = as_of
        self.token = token
        self.faults = faults or Faults()
        self.requests: list[tuple[str, int | str]] = []  # (path, status or fault) for tests
        self.release = threading.Event()  # set on shutdown so stalled handlers return
        self._lock = threading.Lock()
        self._frames: OrderedDict[str, pd.DataFrame] = OrderedDict()

    def frame(self, as_of: str) -> pd.DataFrame:
        with self._lock:
            if as_of not in self._frames:
                rows = simulate(self.settings, pd.Timestamp(as_of))
                rows = rows.sort_values(["updated_at", "customer_id", "snapshot_date"],
                                        kind="stable").reset_index(drop=True)
                self._frames[as_of] = rows
                while len(self._frames) > 2:  # a long-running demo must not grow without end
                    self._frames.popitem(last=False)
            return self._frames[as_of]

    def next_fault(self) -> str | None:
        with self._lock:
            return self.faults.queue.pop(0) if self.faults.queue else None

    def record(self, path: str, outcome: int | str) -> None:
        with self._lock:
            self.requests.append((path, outcome))

    def authorized(self, header: str | None) -> bool:
        if not self.token:
            return True
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)


def encode_cursor(state: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode()


def decode_cursor(cursor: str) -> dict:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return {"since": state["since"], "offset": int(state["offset"]), "as_of": str(state["as_of"])}
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ValueError("cursor is not one this API issued") from None


def _since_index(frame: pd.DataFrame, since: str | None) -> int:
    if not since:
        return 0
    stamp = pd.Timestamp(since)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    values = frame["updated_at"].to_numpy()
    return int(np.searchsorted(values, np.datetime64(stamp.to_datetime64(), "ns"), side="right"))


class CustomerApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's Session reuses connections
    server: DemoApiServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def send_json(self, status: int, body: bytes | str, headers: dict | None = None) -> None:
        payload = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def error(self, status: int, message: str, headers: dict | None = None) -> None:
        self.send_json(status, json.dumps({"error": message}), headers)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            self.send_json(200, b'{"status": "ok"}')
            return
        if not api.authorized(self.headers.get("Authorization")):
            api.record(url.path, 401)
            self.error(401, "missing or invalid bearer token")
            return
        try:
            if url.path == "/v1/customers":
                self.customers(api, query)
            elif url.path == "/v1/customers/count":
                self.count(api, query)
            else:
                api.record(url.path, 404)
                self.error(404, f"no such endpoint {url.path}")
        except ValueError as exc:
            api.record(url.path, 400)
            self.error(400, str(exc))

    def count(self, api: CustomerApi, query: dict) -> None:
        frame = api.frame(api.as_of)
        start = _since_index(frame, query.get("updated_since"))
        newest = frame["updated_at"].iloc[-1].isoformat() if start < len(frame) else None
        api.record("/v1/customers/count", 200)
        self.send_json(200, json.dumps({"count": len(frame) - start, "max_updated_at": newest}))

    def customers(self, api: CustomerApi, query: dict) -> None:
        limit = int(query.get("limit", 1000))
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        if "cursor" in query:
            state = decode_cursor(query["cursor"])
        else:
            state = {"since": query.get("updated_since"), "offset": 0, "as_of": api.as_of}
        fault = api.next_fault()
        fault = None if fault == "ok" else fault  # "ok" lets a test fault a later page
        api.record("/v1/customers", fault or 200)
        if fault in ("500", "503"):
            self.error(int(fault), "injected server error")
            return
        if fault == "429":
            self.error(429, "slow down", {"Retry-After": str(api.faults.retry_after)})
            return
        if fault == "stall":
            api.release.wait(api.faults.stall_seconds)
        frame = api.frame(state["as_of"])
        start = _since_index(frame, state["since"])
        total = len(frame) - start
        begin = start + state["offset"]
        page = frame.iloc[begin:begin + limit]
        step = 2 * limit if fault == "skip-page" else limit
        more = state["offset"] + limit < total
        cursor = encode_cursor({**state, "offset": state["offset"] + step}) if more else None
        page = page.drop(columns=[c for c in api.faults.drop if c in page.columns])
        page = page.rename(columns=api.faults.rename)
        records = page.to_json(orient="records", date_format="iso", date_unit="s")
        body = (f'{{"records": {records}, "next_cursor": {json.dumps(cursor)},'
                f' "total": {total}, "as_of": "{state["as_of"]}"}}').encode()
        if fault == "malformed":
            body = body[: len(body) // 2] + b"<html>proxy error</html>"
            self.send_json(200, body)
        elif fault == "truncate":
            # Announce the whole body, send half, hang up: a page cut short in transit.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_json(200, body)


class DemoApiServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not keep the process alive
    block_on_close = False

    def __init__(self, address: tuple[str, int], api: CustomerApi) -> None:
        self.api = api
        super().__init__(address, CustomerApiHandler)

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout, test over) closes mid-response: not a server bug.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            log.debug("client %s hung up mid-response", client_address)
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.api.release.set()
        self.shutdown()
        self.server_close()


def start_in_thread(api: CustomerApi, host: str = "127.0.0.1", port: int = 0) -> DemoApiServer:
    """Serve ``api`` from a background thread; call ``server.stop()`` when done."""
    server = DemoApiServer((host, port), api)
    threading.Thread(target=server.serve_forever, name="demo-api", daemon=True).start()
    return server


def add_arguments(parser) -> None:
    """``churn-assets demo-api`` options (kept here, next to what they configure)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--customers", type=int, default=3000, help="simulated customers (default 3000)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (default 7)")
    parser.add_argument("--start-date", default="2026-01-05",
                        help="first simulated snapshot week, YYYY-MM-DD (default 2026-01-05)")
    parser.add_argument("--as-of", default="", help="the simulated today (default: today)")
    parser.add_argument("--token-env", default="CHURN_ASSETS_API_TOKEN",
                        help="environment variable holding the bearer token clients must send")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without a token")
    parser.add_argument("--fault", action="append", default=[], choices=FAULT_KINDS,
                        help="fault for the next data request; repeat to queue several")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After of injected 429s")
    parser.add_argument("--stall-seconds", type=float, default=30.0,
                        help="how long an injected 'stall' fault holds a response (default 30)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="serve column OLD under the name NEW (schema drift)")
    parser.add_argument("--drop", action="append", default=[], metavar="COLUMN",
                        help="leave COLUMN out of served records (schema drift); repeatable")


def serve(ns) -> int:
    """Run the demo API in the foreground until SIGINT or SIGTERM."""
    import datetime as dt
    import os
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt  # unwinds serve_forever (or the simulation) in this thread

    # Set first thing: this process may have inherited SIGTERM as ignored, and building a
    # large simulated base takes seconds during which a stop must work too.
    signal.signal(signal.SIGTERM, stop)
    token = "" if ns.no_auth else os.environ.get(ns.token_env, "")
    if not token and not ns.no_auth:
        print(f"demo-api: set {ns.token_env} to the token clients must send, or pass --no-auth",
              file=sys.stderr)
        return 2
    faults = Faults(queue=list(ns.fault), retry_after=ns.retry_after, stall_seconds=ns.stall_seconds,
                    rename=dict(pair.split("=", 1) for pair in ns.rename), drop=list(ns.drop))
    as_of = ns.as_of or dt.datetime.now(dt.timezone.utc).date().isoformat()
    api = CustomerApi(SimulatorSettings(n_customers=ns.customers, start_date=ns.start_date,
                                        seed=ns.seed), as_of, token=token, faults=faults)
    try:
        rows = len(api.frame(as_of))  # simulate before accepting requests, not in the first one
    except KeyboardInterrupt:
        return 0
    server = DemoApiServer((ns.host, ns.port), api)
    print(f"demo customer API on {server.url} ({rows} records as of {as_of};"
          f" token from ${ns.token_env})" if token else
          f"demo customer API on {server.url} ({rows} records as of {as_of}; no auth)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        api.release.set()
        server.server_close()
    return 0
