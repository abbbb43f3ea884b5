"""``materialize`` and ``dev``: the refresh in this process, the UI with its daemon."""

from __future__ import annotations

import argparse
import os
import sys

from churn_assets.cli.config import require_variables
from churn_assets.cli.dagster_home import _dagster, prepare_dagster_home
from churn_assets.cli.parsing import iso_date
from churn_assets.settings import load_settings


def cmd_materialize(ns: argparse.Namespace) -> int:
    import warnings

    import dagster as dg

    from churn_assets.defs.launch import RefreshBusy, refresh_run_config, run_refresh
    from churn_assets.defs.run_progress import (QUIET_CONSOLE, RunWatcher, failure_line, log_path,
                                                 run_summary)

    settings = load_settings()
    require_variables(settings)  # before any work: some would fail only after a deploy
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


def add_commands(sub) -> None:
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
