"""churn-assets: run the pipeline with persistent state, inspect and roll back models."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from churn_assets.settings import SettingsError, load_settings

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
    settings = load_settings()
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(prepare_dagster_home(settings.home)))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster) if dagster.exists() else "dagster", *args]
    os.execvpe(command[0], command, env)
    return 1  # not reached


def cmd_materialize(ns: argparse.Namespace) -> int:
    import dagster as dg

    from churn_assets.defs.launch import RefreshBusy, refresh_run_config, run_refresh

    settings = load_settings()
    dagster_home = prepare_dagster_home(settings.home)
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    run_config = refresh_run_config(ns.as_of, ns.families, ns.seed)
    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
        try:
            result = run_refresh(settings.home, instance, run_config, ns.select)
        except RefreshBusy as exc:
            print(f"churn-assets materialize: {exc}", file=sys.stderr)
            return 3
    if not result.success:
        print(f"churn-assets materialize: run {result.run_id} failed", file=sys.stderr)
        return 1
    return 0


def cmd_dev(ns: argparse.Namespace) -> int:
    return _dagster(["dev", "-m", "churn_assets", "--host", ns.host, "--port", str(ns.port)])


def cmd_check_config(ns: argparse.Namespace) -> int:
    settings = load_settings()  # raises SettingsError, reported by main()
    spec = settings.feature_spec()
    where = os.environ.get("CHURN_ASSETS_CONFIG") or "defaults (CHURN_ASSETS_CONFIG is not set)"
    print(f"configuration OK: {where}")
    print(f"  feature spec {spec.name!r}: {len(spec.numeric_features)} numeric,"
          f" {len(spec.categorical_features)} categorical features, label horizon"
          f" {spec.label_horizon_days} days")
    print(f"  source: {settings.source.kind}; window {settings.window.training_window_weeks}+"
          f"{settings.window.holdout_weeks} weeks; {len(settings.gate.rules)} gate rules;"
          f" schedule {settings.schedule.cron} ({settings.schedule.timezone})")
    print(f"  data directory: {settings.home}")
    return 0


def _registry():
    from churn_assets.storage.registry import ModelRegistry

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
    from churn_assets.storage.registry import RegistryError

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
    settings = load_settings()
    source = {key: redact_url(value) if isinstance(value, str) else value
              for key, value in settings.source.model_dump(mode="json").items()}
    print(json.dumps({"home": str(settings.home), "dagster_home": str(settings.dagster_home),
                      "spec": settings.spec, "source": source,
                      "schedule": f"{settings.schedule.cron} ({settings.schedule.timezone})"},
                     indent=2))
    return 0


def cmd_demo_api(ns: argparse.Namespace) -> int:
    from churn_assets.devtools.demo_api import serve

    return serve(ns)


def cmd_serve(ns: argparse.Namespace) -> int:
    from churn_assets.serving.server import serve

    return serve(ns.host, ns.port, workers=ns.workers, registry=ns.registry, max_batch=ns.max_batch,
                 max_body_bytes=ns.max_body_bytes, poll_seconds=ns.poll_seconds, access_log=ns.access_log)


def build_parser() -> argparse.ArgumentParser:
    from churn_assets.devtools.demo_api import add_arguments as demo_api_arguments

    parser = argparse.ArgumentParser(
        prog="churn-assets",
        description="Run the churn-model refresh with persistent state, check the configuration,"
                    " inspect and roll back model versions, and serve predictions. State lives"
                    " in $CHURN_ASSETS_HOME (default ~/.churn_assets); settings come from the"
                    " TOML file named by $CHURN_ASSETS_CONFIG.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("materialize", help="run the weekly refresh now, as a churn_refresh run",
                       description="Run the churn_refresh job in this process, recorded in the"
                                   " persistent Dagster instance. Only one refresh runs at a time"
                                   " per data directory: a second one exits with code 3.")
    p.add_argument("--select", default="*",
                   help="comma-separated assets to run (default: the whole graph)")
    p.add_argument("--as-of", default=os.environ.get("CHURN_ASSETS_SIMULATOR_AS_OF", ""),
                   metavar="YYYY-MM-DD",
                   help="the data's 'today' for this run (default: $CHURN_ASSETS_SIMULATOR_AS_OF,"
                        " else the source's own default, i.e. the real date)")
    p.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="model families to try (logistic_regression, hist_gradient_boosting;"
                        " default: both)")
    p.add_argument("--seed", type=int, help="training seed (default 42)")
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("dev", help="open the Dagster UI and daemon (schedule, sensors) with persistent state")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000)")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("check-config", help="validate the configuration and feature spec; run nothing")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("versions", help="list model versions; * marks production")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("rollback", help="move production back to an earlier version")
    p.add_argument("--to", help="version, e.g. v0003 (default: the newest older than production)")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("serve", help="serve churn predictions from the production model over HTTP")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
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
    try:
        return ns.func(ns)
    except SettingsError as exc:
        # A configuration mistake is the user's to fix: the reason, not a traceback.
        print(f"churn-assets {ns.command}: configuration error:\n  "
              + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
