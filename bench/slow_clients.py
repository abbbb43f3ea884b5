"""Healthy-client latency of `churn-assets serve` with and without a slow-client attack.

    python bench/slow_clients.py [--slow 1100] [--mix mixed|bodies] [--tick 5] [--attack-seconds 40]
                                 [--quiet-seconds 10] [--pool 8] [--workers 1] [--server-fd-limit 1024]
                                 [--server-fd-hard-limit N] [--code DIR] [--json out.json]

Loopback only, bounded in count and time. One model (logistic regression, simulator
data) is registered and promoted in a temporary registry; the server runs with its
default limits (header deadline 10 s, body deadline 30 s, 4,096 connections per worker),
one worker (``serve``'s default) and the common soft open-files limit of 1024 (as on
the machine of the report; ``serve`` raises it up to the hard limit, which
``--server-fd-hard-limit`` sets too, as ``ulimit -Hn`` would). Phases, with healthy
clients the whole time (two posting one record each over keep-alive connections, one
opening a new connection per request):

1. quiet: ``--quiet-seconds`` without attack;
2. attack: ``--slow`` raw connections, held ``--attack-seconds``. ``--mix mixed``: 60 %
   send headers with a 1,000,000-byte Content-Length and then one body byte per
   ``--tick`` seconds, 25 % send their headers one byte per tick, 15 % connect and send
   nothing; ``--mix bodies``: all send the headers and body bytes (the report of a
   server at its descriptor limit). One second in, ``--pool`` more healthy clients open
   a keep-alive connection each (as a client pool or a proxy would) and post over it.
   Reports the healthy latencies meanwhile, when healthy requests were back for good
   (the end of the last failure, seconds after the attack began) and when and how each
   slow connection was closed;
3. memory: one 16 MiB body of ``{}`` objects; status, seconds to answer, and the
   largest worker RSS before and after.

``--code DIR`` runs the server from another copy of the package (e.g. the commit before
these limits, ``git archive <commit> churn_assets | tar -x -C DIR``) for a comparison.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from churn_assets_tests.serving_support import (HealthyClients, ServerProcess, SlowClients,  # noqa: E402
                                                http_json, percentile, wait_for)

from churn_assets.storage.registry import ModelRegistry  # noqa: E402

RECORD = {"customer_id": "C000001", "age": 41, "tenure_days": 320.0, "seats": 1, "monthly_spend": 29.0,
          "sessions_last_30d": 4, "orders_last_30d": 0, "avg_order_value": None,
          "support_tickets_last_90d": 3, "discount_share": 0.1, "country": "USA", "plan": "Basic",
          "payment_method": "COD", "acquisition_channel": "paid search"}


def latency_summary(latencies: list[float], failures: list[str], seconds: float) -> dict:
    ms = [1000 * x for x in latencies]
    return {"requests": len(ms), "failures": len(failures), "failure_examples": sorted(set(failures))[:3],
            "requests_per_s": round(len(ms) / seconds, 1),
            "p50_ms": round(percentile(ms, 50), 2) if ms else None,
            "p99_ms": round(percentile(ms, 99), 2) if ms else None,
            "max_ms": round(max(ms), 1) if ms else None}


def back_after(clients: HealthyClients, attack: float) -> dict:
    """When the healthy requests of ``clients`` were back for good: the end of the last
    failed request, in seconds after the attack began (0 if none failed)."""
    with clients.lock:
        events = [e for e in clients.events if e[1] >= attack]
    failed = [started + seconds - attack for _, started, seconds, status in events if status != 200]
    return {"requests": len(events), "failed": len(failed), "back_after_s": round(max(failed, default=0.0), 2),
            "failure_kinds": sorted({str(s) for *_, s in events if s != 200})[:3]}


def worker_rss_mb(pid: int) -> float:
    """Largest resident set of the server process and its children (with one worker,
    uvicorn serves in the main process; with more, in children)."""
    sizes = []
    for option in ("-p", "--ppid"):
        out = subprocess.run(["ps", "-o", "rss=", option, str(pid)], capture_output=True, text=True).stdout
        sizes += [int(x) for x in out.split()]
    return round(max(sizes, default=0) / 1024, 1)


def post_raw(port: int, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, round(time.perf_counter() - start, 3)
    finally:
        conn.close()


PREPARE = """
import sys
from churn_assets.devtools.sample_models import register, sample_frames, train_family
from churn_assets.storage.registry import ModelRegistry
registry = ModelRegistry(sys.argv[1])
version = register(registry, train_family(sample_frames(n_customers=1000), "logistic_regression"))
registry.promote(version.version, "benchmark")
"""


def prepare_registry(workdir: Path, env: dict) -> ModelRegistry:
    """One promoted model, trained and pickled by the same code the server will run
    (a model pickled by this tree may not load in an older copy of the package)."""
    root = workdir / "registry"
    subprocess.run([sys.executable, "-c", PREPARE, str(root)], cwd=workdir, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    return ModelRegistry(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=1100)
    parser.add_argument("--mix", choices=("mixed", "bodies"), default="mixed")
    parser.add_argument("--pool", type=int, default=8, help="keep-alive healthy clients that start during the attack")
    parser.add_argument("--tick", type=float, default=5.0)
    parser.add_argument("--attack-seconds", type=float, default=40.0)
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-fd-limit", type=int, default=1024, help="soft RLIMIT_NOFILE of the server")
    parser.add_argument("--server-fd-hard-limit", type=int, help="hard RLIMIT_NOFILE of the server (default: unchanged)")
    parser.add_argument("--code", type=Path, help="run the server from this copy of the package")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    if ns.slow > 5000 or ns.attack_seconds > 120 or ns.pool > 200:
        sys.exit("bounded benchmark: at most 5000 slow clients, 200 pooled ones and 120 s of attack")
    if ns.mix == "bodies":
        counts = {"slow_body": ns.slow}
    else:
        counts = {"slow_body": int(ns.slow * 0.6), "slow_headers": int(ns.slow * 0.25)}
        counts["idle"] = ns.slow - sum(counts.values())
    # This process holds every slow socket: raise its own soft limit (not the server's).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = ns.slow + ns.pool + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"this process may open {hard} files; {needed} needed (raise ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    workdir = Path(tempfile.mkdtemp(prefix="churn-slow-bench-"))
    env = {"PYTHONPATH": str(ns.code.resolve())} if ns.code else {}
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "load_average_1m_before": os.getloadavg()[0]},
               "settings": {**vars(ns), "code": str(ns.code) if ns.code else "this tree", "json": None,
                            "slow_counts": counts}}
    try:
        registry = prepare_registry(workdir, env)
        server = ServerProcess(registry.root, workdir / "server.log", workers=ns.workers, env=env,
                               fd_soft_limit=ns.server_fd_limit, fd_hard_limit=ns.server_fd_hard_limit)
        try:
            server.wait_healthy()
            wait_for(lambda: http_json(server.port, "GET", "/ready")[0] == 200, 30, what="the model")
            with HealthyClients(server.port, RECORD, threads=2) as healthy, \
                    HealthyClients(server.port, RECORD, threads=1, fresh_connections=True) as fresh:
                time.sleep(1.0)
                healthy.take(), fresh.take()  # warm-up
                time.sleep(ns.quiet_seconds)
                results["quiet"] = latency_summary(*healthy.take(), ns.quiet_seconds)
                results["quiet_new_connections"] = latency_summary(*fresh.take(), ns.quiet_seconds)
                quiet_rss = worker_rss_mb(server.process.pid)
                start = time.monotonic()
                slow = SlowClients(server.port, counts, tick=ns.tick, limit=ns.attack_seconds).start()
                results["attack_connect_seconds"] = round(time.monotonic() - start, 2)
                try:
                    time.sleep(1)
                    with HealthyClients(server.port, RECORD, threads=ns.pool) as pool:
                        time.sleep(1)
                        results["worker_rss_mb_quiet"] = quiet_rss
                        results["worker_rss_mb_with_slow_clients"] = worker_rss_mb(server.process.pid)
                        slow.join(timeout=ns.attack_seconds + 10)
                    elapsed = time.monotonic() - start
                    results["recovery"] = {"keep_alive": back_after(healthy, slow.started),
                                           "new_connections": back_after(fresh, slow.started),
                                           "pool_opened_during_attack": back_after(pool, slow.started)}
                    results["attack"] = latency_summary(*healthy.take(), elapsed)
                    results["attack_new_connections"] = latency_summary(*fresh.take(), elapsed)
                    results["attack_pool"] = latency_summary(*pool.take(), elapsed - 1)
                finally:
                    slow.close()
                results["slow_clients"] = {}
                for kind in counts:
                    clients = slow.of(kind)
                    closed = [c["closed_after"] for c in clients if c["closed_after"] is not None]
                    results["slow_clients"][kind] = {
                        "count": len(clients), "closed": len(closed),
                        "answered_408": sum(c["received"].startswith(b"HTTP/1.1 408") for c in clients),
                        "shed_503": sum(c["received"].startswith(b"HTTP/1.1 503") for c in clients),
                        "closed_after_s": {"min": round(min(closed), 2), "median": round(statistics.median(closed), 2),
                                           "max": round(max(closed), 2)} if closed else None}
                rss_before = worker_rss_mb(server.process.pid)
                healthy.take()
                body = b'{"customers": [' + b"{}," * (5_500_000 - 1) + b"{}]}"
                status, seconds = post_raw(server.port, body)
                during = healthy.take()
                results["empty_objects_16mib"] = {
                    "body_bytes": len(body), "status": status, "seconds": seconds,
                    "worker_rss_mb_before": rss_before, "worker_rss_mb_after": worker_rss_mb(server.process.pid),
                    "healthy_max_ms_meanwhile": latency_summary(*during, max(seconds, 1e-3))["max_ms"]}
        finally:
            server.stop()
            log_text = (workdir / "server.log").read_text(errors="replace")
            results["server_log"] = {
                "descriptor_warnings": log_text.count("file descriptors low"),
                "registry_unreadable": log_text.count("is unreadable"),
                "last_descriptor_warning": ([line for line in log_text.splitlines()
                                             if "file descriptors low" in line] or [None])[-1]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
