"""``serve`` and ``demo-api``: the prediction server and the demo customer API."""

from __future__ import annotations

import argparse


def cmd_demo_api(ns: argparse.Namespace) -> int:
    from churn_assets.devtools.demo_api import serve

    return serve(ns)


def cmd_serve(ns: argparse.Namespace) -> int:
    from churn_assets.serving.server import serve

    return serve(ns.host, ns.port, workers=ns.workers, registry=ns.registry, max_batch=ns.max_batch,
                 max_body_bytes=ns.max_body_bytes, poll_seconds=ns.poll_seconds, access_log=ns.access_log,
                 limit_concurrency=ns.limit_concurrency, keep_alive_seconds=ns.keep_alive_seconds,
                 header_timeout=ns.header_timeout, body_timeout=ns.body_timeout,
                 max_inflight_body_bytes=ns.max_inflight_body_bytes)


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve churn predictions from the production model over HTTP")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (each follows deployments)")
    p.add_argument("--registry", help="registry folder (default: $CHURN_ASSETS_HOME/registry)")
    p.add_argument("--max-batch", type=int, help="most records per request (default 10000)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 16 MiB)")
    p.add_argument("--poll-seconds", type=float, help="how often to check the production pointer (0.5)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.add_argument("--limit-concurrency", type=int, help="connections per worker before 503 (default 4096)")
    p.add_argument("--keep-alive-seconds", type=float, help="idle time before a kept-alive connection closes (5)")
    p.add_argument("--header-timeout", type=float, help="seconds to send the request headers, else 408 (10)")
    p.add_argument("--body-timeout", type=float, help="seconds to send the request body, else 408 (30)")
    p.add_argument("--max-inflight-body-bytes", type=int,
                   help="bytes of large (>64 KiB) bodies one worker holds while receiving them,"
                        " else 503 (default 256 MiB)")
    p.set_defaults(func=cmd_serve)
    from churn_assets.devtools.demo_api import add_arguments as demo_api_arguments

    p = sub.add_parser("demo-api", help="serve the simulator over the customer API (docs/ingestion.md)")
    demo_api_arguments(p)
    p.set_defaults(func=cmd_demo_api)
