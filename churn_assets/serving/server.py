"""``churn-assets serve``: uvicorn running the prediction API, one or more worker processes.

Settings travel to the workers as environment variables because uvicorn starts each
worker by importing ``app_from_env``; every worker then polls the registry itself, so
hot reload needs no coordination between them.
"""

from __future__ import annotations

import copy
import os
import signal

import uvicorn

APP = "churn_assets.serving.app:app_from_env"


def log_config() -> dict:
    """uvicorn's logging plus the churn_assets loggers (model swaps, refused artifacts)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["churn_assets"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(host: str, port: int, workers: int = 1, registry: str | None = None,
          max_batch: int | None = None, max_body_bytes: int | None = None,
          poll_seconds: float | None = None, access_log: bool = False) -> int:
    for name, value in (("CHURN_ASSETS_SERVE_REGISTRY", registry),
                        ("CHURN_ASSETS_SERVE_MAX_BATCH", max_batch),
                        ("CHURN_ASSETS_SERVE_MAX_BODY_BYTES", max_body_bytes),
                        ("CHURN_ASSETS_SERVE_POLL_SECONDS", poll_seconds)):
        if value is not None:
            os.environ[name] = str(value)
    # A parent may have started us with SIGTERM ignored (it is inherited); a server must
    # still stop on it, so restore the default before uvicorn installs its handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, loop="uvloop",
                http="httptools", log_config=log_config(), access_log=access_log,
                timeout_graceful_shutdown=5)
    return 0
