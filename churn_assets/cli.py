"""``churn-assets``: run the pipeline with persistent state, inspect and roll back models."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

DAGSTER_YAML = """\
# Written by churn-assets. One refresh at a time: the schedule and sensors queue behind it.
run_queue:
  max_concurrent_runs: 1
  tag_concurrency_limits:
    - key: "churn_assets/refresh"
      limit: 1
telemetry:
  enabled: false
"""


def prepare_dagster_home(home: Path) -> Path:
    """A persistent Dagster instance under the churn-assets data directory."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return dagster_home


def _dagster(args: list[str]) -> int:
    from churn_assets.settings import load_settings

    settings = load_settings()
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(prepare_dagster_home(settings.home)))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster) if dagster.exists() else "dagster", *args]
    os.execvpe(command[0], command, env)
    return 1  # not reached


def cmd_materialize(ns: argparse.Namespace) -> int:
    return _dagster(["asset", "materialize", "-m", "churn_assets", "--select", ns.select])


def cmd_dev(ns: argparse.Namespace) -> int:
    return _dagster(["dev", "-m", "churn_assets", "--host", ns.host, "--port", str(ns.port)])


def _registry():
    from churn_assets.registry import ModelRegistry
    from churn_assets.settings import load_settings

    return ModelRegistry(load_settings().home / "registry")


def cmd_versions(ns: argparse.Namespace) -> int:
    registry = _registry()
    pointer = registry.production_pointer() or {}
    versions = registry.versions()
    if not versions:
        print(f"no model versions in {registry.root}")
        return 0
    for v in versions:
        mark = "*" if v.version == pointer.get("version") else " "
        metrics = v.manifest.get("metrics", {})
        window = v.manifest.get("data_window", {})
        print(f"{mark} {v.version}  {v.manifest.get('model_family', '?'):<24}"
              f" roc_auc={metrics.get('roc_auc', float('nan')):.4f}"
              f" holdout={window.get('holdout')}  registered {v.manifest.get('registered_at')}")
    return 0


def cmd_rollback(ns: argparse.Namespace) -> int:
    from churn_assets.registry import RegistryError

    try:
        pointer = _registry().rollback(to=ns.to)
    except RegistryError as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 2
    print(f"production is now {pointer['version']} (was {pointer['previous']})")
    return 0


def redact_url(value: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``; other text unchanged."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", value)


def cmd_info(ns: argparse.Namespace) -> int:
    from churn_assets.settings import load_settings

    settings = load_settings()
    source = {key: redact_url(value) if isinstance(value, str) else value
              for key, value in settings.source.items()}
    print(json.dumps({"home": str(settings.home), "dagster_home": str(settings.dagster_home),
                      "spec": settings.spec, "source": source,
                      "schedule": f"{settings.cron} ({settings.timezone})"}, indent=2))
    return 0


def cmd_demo_api(ns: argparse.Namespace) -> int:
    from churn_assets.demo_api import serve

    return serve(ns)


def cmd_serve(ns: argparse.Namespace) -> int:
    from churn_assets.serving.server import serve

    return serve(ns.host, ns.port, workers=ns.workers, registry=ns.registry, max_batch=ns.max_batch,
                 max_body_bytes=ns.max_body_bytes, poll_seconds=ns.poll_seconds, access_log=ns.access_log)


def build_parser() -> argparse.ArgumentParser:
    from churn_assets.demo_api import add_arguments as demo_api_arguments

    parser = argparse.ArgumentParser(prog="churn-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("materialize", help="run the refresh (default: the whole graph) with persistent state")
    p.add_argument("--select", default="*")
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("dev", help="open the Dagster UI and daemon (schedule, sensors) with persistent state")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("versions", help="list model versions; * marks production")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("rollback", help="move production back to an earlier version")
    p.add_argument("--to", help="version, e.g. v0003 (default: the newest older than production)")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("serve", help="serve churn predictions from the production model over HTTP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each follows deployments)")
    p.add_argument("--registry", help="registry folder (default: $CHURN_ASSETS_HOME/registry)")
    p.add_argument("--max-batch", type=int, help="most records per request (default 10000)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 16 MiB)")
    p.add_argument("--poll-seconds", type=float, help="how often to check the production pointer (0.5)")
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("info", help="print where state lives and the active configuration")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo-api", help="serve the simulator over the customer API (docs/ingestion.md)")
    demo_api_arguments(p)
    p.set_defaults(func=cmd_demo_api)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
