"""``churn-assets serve``: uvicorn running the prediction API, one or more worker processes.

Settings travel to the workers as environment variables because uvicorn starts each
worker by importing ``app_from_env``; every worker then polls the registry itself, so
hot reload needs no coordination between them.

Slow or stuck clients are bounded at three levels (docs/serving.md, "Limits"): uvicorn's
``limit_concurrency`` (503 past that many connections per worker) and keep-alive
timeout; ``guard.GuardedHttpToolsProtocol`` (header deadline, body backstop, and
shedding the slowest request senders when the worker runs low on file descriptors,
``fd_budget.py``); and the ASGI front door (body deadline, byte caps, JSON parse bound).
"""

from __future__ import annotations

import copy
import logging
import os
import resource
import signal

import uvicorn

APP = "churn_assets.serving.app:app_from_env"
PROTOCOL = "churn_assets.serving.guard:GuardedHttpToolsProtocol"
DEFAULT_LIMIT_CONCURRENCY = 4096  # an idle uvicorn connection costs ~10 KB
DEFAULT_KEEP_ALIVE_SECONDS = 5.0
FD_HEADROOM = 64  # descriptors a worker needs besides its connections (log, registry, pipes)
log = logging.getLogger("churn_assets.serving")


def log_config() -> dict:
    """uvicorn's logging plus the churn_assets loggers (model swaps, refused artifacts)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["churn_assets"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit).

    At the common soft limit of 1024, a thousand idle connections exhaust a worker's
    descriptors and accept() fails for everyone; ``limit_concurrency`` only answers
    503 to connections it could accept. Workers inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


def serve(host: str, port: int, workers: int = 1, registry: str | None = None,
          max_batch: int | None = None, max_body_bytes: int | None = None,
          poll_seconds: float | None = None, access_log: bool = False,
          limit_concurrency: int | None = None, keep_alive_seconds: float | None = None,
          header_timeout: float | None = None, body_timeout: float | None = None,
          max_inflight_body_bytes: int | None = None) -> int:
    from churn_assets.settings import SettingsError  # printed by the CLI as one line, exit code 2

    for flag, value in (("--max-batch", max_batch), ("--max-body-bytes", max_body_bytes),
                        ("--poll-seconds", poll_seconds), ("--limit-concurrency", limit_concurrency),
                        ("--keep-alive-seconds", keep_alive_seconds), ("--header-timeout", header_timeout),
                        ("--body-timeout", body_timeout), ("--max-inflight-body-bytes", max_inflight_body_bytes)):
        if value is not None and not value > 0:
            raise SettingsError(f"{flag} {value:g}: must be greater than 0")
    for name, value in (("CHURN_ASSETS_SERVE_REGISTRY", registry),
                        ("CHURN_ASSETS_SERVE_MAX_BATCH", max_batch),
                        ("CHURN_ASSETS_SERVE_MAX_BODY_BYTES", max_body_bytes),
                        ("CHURN_ASSETS_SERVE_POLL_SECONDS", poll_seconds),
                        ("CHURN_ASSETS_SERVE_HEADER_TIMEOUT", header_timeout),
                        ("CHURN_ASSETS_SERVE_BODY_TIMEOUT", body_timeout),
                        ("CHURN_ASSETS_SERVE_MAX_INFLIGHT_BODY_BYTES", max_inflight_body_bytes)):
        if value is not None:
            os.environ[name] = str(value)
    # Check every setting here, once, with a message naming it, rather than in each
    # worker after the socket is bound (uvicorn would only log a traceback per worker).
    from churn_assets.serving.app import ServeConfig
    from churn_assets.serving.guard import BODY_TIMEOUT_ENV, HEADER_TIMEOUT_ENV, seconds_from_env
    ServeConfig.from_env()
    seconds_from_env(HEADER_TIMEOUT_ENV, 1.0)
    seconds_from_env(BODY_TIMEOUT_ENV, 1.0)
    limit = DEFAULT_LIMIT_CONCURRENCY if limit_concurrency is None else limit_concurrency
    keep_alive = DEFAULT_KEEP_ALIVE_SECONDS if keep_alive_seconds is None else keep_alive_seconds
    available = raise_fd_limit(limit + FD_HEADROOM)
    if available < limit + FD_HEADROOM:
        log.warning("open-files limit %d is below --limit-concurrency %d + %d: near it, the connections"
                    " sending their request slowest are closed to keep room for new ones (raise it with"
                    " ulimit -n)", available, limit, FD_HEADROOM)
    # A parent may have started us with SIGTERM ignored (it is inherited); a server must
    # still stop on it, so restore the default before uvicorn installs its handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, loop="uvloop",
                http=PROTOCOL, log_config=log_config(), access_log=access_log,
                limit_concurrency=limit, timeout_keep_alive=keep_alive,
                timeout_graceful_shutdown=5)
    return 0
