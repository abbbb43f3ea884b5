"""churn-assets: run the pipeline with persistent state, inspect and roll back models."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from churn_assets.settings import SettingsError, load_settings

# Sections of the instance config that keep a killed run from holding the refresh slot
# forever (issue 8). prepare_dagster_home adds any that an existing dagster.yaml lacks.
# The launcher is Dagster's default plus a worker health check (defs/liveness.py): run
# monitoring marks a run FAILED within one poll interval once its process is gone, and
# that RUN_FAILURE is what the failure alert reports. No resume: a refresh restarts
# cleanly from its watermark on the next tick, a half-resumed one would not.
DAGSTER_RELIABILITY_SECTIONS = {
    "run_launcher": """\
run_launcher:
  module: churn_assets.defs.liveness
  class: ChurnRunLauncher
""",
    "run_monitoring": """\
run_monitoring:
  enabled: true
  poll_interval_seconds: 15
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
""",
}
DAGSTER_YAML = """\
# Written by churn-assets. One refresh at a time: the schedule and sensors queue behind it.
run_queue:
  max_concurrent_runs: 1
  tag_concurrency_limits:
    - key: "churn_assets/refresh"
      limit: 1
telemetry:
  enabled: false
""" + "".join(DAGSTER_RELIABILITY_SECTIONS.values())


def postgres_storage(url_env: str) -> str:
    """dagster.yaml ``storage`` in PostgreSQL, its URL read from ``url_env`` when the
    instance loads (the URL may carry a password; it never enters the file)."""
    return f"storage:\n  postgres:\n    postgres_url:\n      env: {url_env}\n"


def prepare_dagster_home(home: Path, postgres_url_env: str = "") -> Path:
    """A persistent Dagster instance under the churn-assets data directory.

    A dagster.yaml written by an earlier version (or edited by hand) keeps every line;
    only the missing top-level sections of ``DAGSTER_RELIABILITY_SECTIONS`` are appended,
    so an instance never stays without run monitoring. A section the user set (their own
    run_launcher, monitoring switched off) is left as it is. ``postgres_url_env``
    (``[dagster] postgres_url_env``) puts runs, events and schedules in PostgreSQL: the
    URL must name the driver, ``postgresql+psycopg2://`` (SQLAlchemy 2.1 maps a bare
    ``postgresql://`` to psycopg 3, which dagster-postgres does not use).
    """
    import yaml

    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    sections = dict(DAGSTER_RELIABILITY_SECTIONS)
    if postgres_url_env:
        sections["storage"] = postgres_storage(postgres_url_env)
    if not config.exists():
        config.write_text(DAGSTER_YAML + (sections.get("storage", "")))
        return dagster_home
    text = config.read_text()
    try:
        present = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return dagster_home  # not ours to repair; Dagster names the error when it loads it
    missing = [block for key, block in sections.items()
               if not isinstance(present, dict) or key not in present]
    if missing:
        added = "# Added by churn-assets (run monitoring, [dagster] settings).\n" + "".join(missing)
        config.write_text(text + ("" if text.endswith("\n") or not text else "\n") + added)
    return dagster_home


def _dagster(args: list[str]) -> int:
    settings = load_settings()
    env = dict(os.environ)
    dagster_home = prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)
    env.setdefault("DAGSTER_HOME", str(dagster_home))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster) if dagster.exists() else "dagster", *args]
    os.execvpe(command[0], command, env)
    return 1  # not reached


def cmd_materialize(ns: argparse.Namespace) -> int:
    import warnings

    import dagster as dg

    from churn_assets.defs.launch import RefreshBusy, refresh_run_config, run_refresh
    from churn_assets.defs.run_progress import (QUIET_CONSOLE, RunWatcher, failure_line, log_path,
                                                 run_summary)

    settings = load_settings()
    dagster_home = prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    run_config = refresh_run_config(ns.as_of, ns.families, ns.seed)
    if not ns.verbose:
        # Dagster's DEBUG stream goes to the log file (written by the watcher from the
        # event log); the terminal gets one line per step and the summary.
        run_config = {**run_config, **QUIET_CONSOLE}
        warnings.filterwarnings("ignore", module=r"dagster(\..*)?$")
    log = log_path(settings.local_home)
    print(f"refreshing {settings.home} (Dagster log: {log})", flush=True)
    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance, open(log, "w") as log_file:
        watcher = RunWatcher(instance, log_file, sys.stdout)
        watcher.start()
        result = None
        try:
            result = run_refresh(settings.local_home, instance, run_config, ns.select)
        except RefreshBusy as exc:
            print(f"churn-assets materialize: {exc}", file=sys.stderr)
            return 3
        finally:
            watcher.finish(result.run_id if result is not None else None)
        success, lines = run_summary(instance, result.run_id)
    print("\n".join(lines))
    reason = failure_line(success and result.success, lines)
    if reason:
        print(f"churn-assets materialize: {reason}", file=sys.stderr)
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
    from churn_assets.storage.object_registry import open_registry

    return open_registry(load_settings().home / "registry")


def cmd_versions(ns: argparse.Namespace) -> int:
    from churn_assets.defs.reporting import format_history, registry_history

    registry = _registry()
    history = registry_history(registry)
    problems = history["problems"] + [str(p) for p in registry.problems()]
    for problem in problems:  # damaged files: one line each, never a traceback
        print(f"warning: {problem}", file=sys.stderr)
    if ns.json:
        print(json.dumps(dict(history, problems=problems), indent=2, default=str))
        return 0
    print(format_history(history))
    return 0


def _report_production_to_dagster(pointer: dict, action: str) -> str | None:
    """Tell the Dagster instance that production changed outside a run.

    A runless materialization of ``deployed_model`` makes the UI show the true
    production version. Best effort: the registry already changed, and a locked or
    missing instance must not turn a finished rollback into an error.
    """
    try:
        import dagster as dg

        settings = load_settings()
        dagster_home = prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key="deployed_model",
                description=f"{action} outside a run: production is {pointer['version']}",
                metadata={"production_version": pointer["version"],
                          "previous_version": str(pointer.get("previous")), "new_version": False,
                          "reason": str(pointer.get("reason") or action), "sha256": pointer.get("sha256", ""),
                          "changed_by": f"churn-assets {action}"}))
    except Exception as exc:  # noqa: BLE001 - reported, never fatal (see above)
        return f"{type(exc).__name__}: {exc}"
    return None


def cmd_rollback(ns: argparse.Namespace) -> int:
    from churn_assets.storage.registry import RegistryError

    try:
        pointer = _registry().rollback(to=ns.to)
    except RegistryError as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 2
    print(f"production is now {pointer['version']} (was {pointer['previous']})")
    problem = _report_production_to_dagster(pointer, "rollback")
    if problem:
        print(f"warning: the Dagster instance was not told about the rollback ({problem});"
              " the registry is correct, the UI may show the old version", file=sys.stderr)
    return 0


def _named_or_production(registry, name: str | None, command: str, how_to_name: str):
    """The version ``name``, or production; None (after saying why on stderr) if neither."""
    from churn_assets.storage.registry import RegistryError

    try:
        version = registry.get(name) if name else registry.production()
    except RegistryError as exc:
        print(f"churn-assets {command}: {exc}", file=sys.stderr)
        return None
    if version is None:
        print(f"churn-assets {command}: nothing in production in {registry.root};"
              f" name a version ({how_to_name})", file=sys.stderr)
    return version


def cmd_card(ns: argparse.Namespace) -> int:
    from churn_assets.defs.reporting import card_text

    version = _named_or_production(_registry(), ns.version, "card", "churn-assets card v0003")
    if version is None:
        return 2
    print(card_text(version), end="")
    return 0


def cmd_score(ns: argparse.Namespace) -> int:
    import datetime as dt

    import pandas as pd

    from churn_assets.core.scoring import score_customers
    from churn_assets.serving.fast_path import batch_scorer
    from churn_assets.storage.atomic import atomic_write_bytes
    from churn_assets.storage.registry import RegistryError

    registry = _registry()
    version = _named_or_production(registry, ns.version, "score", "--version v0003")
    if version is None:
        return 2
    try:
        predictor = registry.load(version)
    except RegistryError as exc:
        print(f"churn-assets score: {exc}", file=sys.stderr)
        return 2
    source = Path(ns.input)
    try:
        records = (pd.read_parquet(source) if source.suffix.lower() in (".parquet", ".pq")
                   else pd.read_csv(source, dtype={predictor.spec.id_column: str}))
    except (OSError, ValueError) as exc:
        print(f"churn-assets score: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    missing = [c for c in [predictor.spec.id_column, *predictor.spec.feature_columns]
               if c not in records.columns]
    if missing:
        print(f"churn-assets score: {source} lacks the columns {missing} that {version.version}"
              " needs", file=sys.stderr)
        return 2
    scored_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    scores = score_customers(predictor, records, version.version, scored_at, ns.chunk_rows,
                             predict=batch_scorer(predictor))
    import io

    buf = io.BytesIO()
    scores.to_parquet(buf, index=False)
    atomic_write_bytes(Path(ns.output), buf.getvalue())
    print(f"scored {len(scores)} customers with {version.version} -> {ns.output}")
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
                 max_body_bytes=ns.max_body_bytes, poll_seconds=ns.poll_seconds, access_log=ns.access_log,
                 limit_concurrency=ns.limit_concurrency, keep_alive_seconds=ns.keep_alive_seconds,
                 header_timeout=ns.header_timeout, body_timeout=ns.body_timeout,
                 max_inflight_body_bytes=ns.max_inflight_body_bytes)


def iso_date(text: str) -> str:
    """argparse type: a YYYY-MM-DD date, checked before anything runs."""
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat() if text else ""
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


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
                   metavar="YYYY-MM-DD", type=iso_date,
                   help="the data's 'today' for this run (default: $CHURN_ASSETS_SIMULATOR_AS_OF,"
                        " else the source's own default, i.e. the real date)")
    p.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="model families to try (logistic_regression, hist_gradient_boosting;"
                        " default: both)")
    p.add_argument("--seed", type=int, help="training seed (default 42)")
    p.add_argument("--verbose", action="store_true",
                   help="print Dagster's full log to the terminal (default: to a file under the data directory)")
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("dev", help="open the Dagster UI and daemon (schedule, sensors) with persistent state")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000)")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("check-config", help="validate the configuration and feature spec; run nothing")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("versions", help="list model versions and refused challengers; * marks production",
                       description="Every registered version with the comparison that decided it"
                                   " (challenger vs champion on the same holdout, the delta and the"
                                   " gate verdict), then the challengers the gate refused.")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("card", help="print the model card of a version (default: production)")
    p.add_argument("version", nargs="?", help="version, e.g. v0003 (default: the production version)")
    p.set_defaults(func=cmd_card)
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
    p.add_argument("--limit-concurrency", type=int, help="connections per worker before 503 (default 4096)")
    p.add_argument("--keep-alive-seconds", type=float, help="idle time before a kept-alive connection closes (5)")
    p.add_argument("--header-timeout", type=float, help="seconds to send the request headers, else 408 (10)")
    p.add_argument("--body-timeout", type=float, help="seconds to send the request body, else 408 (30)")
    p.add_argument("--max-inflight-body-bytes", type=int,
                   help="bytes of large (>64 KiB) bodies one worker holds while receiving them,"
                        " else 503 (default 256 MiB)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("score", help="score a file of customer snapshots with a model version",
                       description="Write churn probability, label and risk decile for every record"
                                   " of --input (CSV or Parquet) to --output (Parquet), with the"
                                   " production model or --version.")
    p.add_argument("--input", required=True, help="customer snapshots, .csv or .parquet, with the spec's columns")
    p.add_argument("--output", required=True, help="where to write the scores (.parquet)")
    p.add_argument("--version", help="model version, e.g. v0003 (default: production)")
    p.add_argument("--chunk-rows", type=int, default=250_000, help="records scored at a time (default 250000)")
    p.set_defaults(func=cmd_score)
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
