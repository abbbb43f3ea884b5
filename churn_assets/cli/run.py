"""``materialize`` and ``dev``: the refresh in this process, the UI with its daemon."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager

from churn_assets.cli.config import require_variables
from churn_assets.cli.dagster_home import prepare_dagster_home
from churn_assets.cli.parsing import iso_date
from churn_assets.settings import load_settings

# `churn-assets dev` stops within 5 s of SIGINT or SIGTERM: its processes get this long to
# shut down cleanly (the webserver and an idle daemon take about 1 s), then are killed.
DEV_GRACE_SECONDS = 2.5
# A refused challenger is a decision, not a crash: its own exit code, so a cron job or CI
# step can tell "the gate kept production" (4) from "the refresh broke" (1).
REFUSED_EXIT = 4


@contextmanager
def open_instance(settings, quiet: bool = True):
    """The persistent Dagster instance of ``settings`` (``$DAGSTER_HOME`` if set), with
    Dagster's own warnings kept out of the terminal unless ``quiet`` is off."""
    import dagster as dg

    dagster_home = prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    if quiet:
        warnings.filterwarnings("ignore", module=r"dagster(\..*)?$")
    with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
        yield instance


def cmd_materialize(ns: argparse.Namespace) -> int:
    from churn_assets.defs.launch import RefreshBusy, refresh_run_config, run_refresh
    from churn_assets.defs.outcome import settle_outcome
    from churn_assets.defs.run_progress import (QUIET_CONSOLE, RunWatcher, failure_line, log_path,
                                                 run_summary)

    settings = load_settings()
    require_variables(settings)  # before any work: some would fail only after a deploy
    run_config = refresh_run_config(ns.as_of, ns.families, ns.seed)
    if not ns.verbose:
        # Dagster's DEBUG stream goes to the log file (written by the watcher from the
        # event log); the terminal gets one line per step and the summary.
        run_config = {**run_config, **QUIET_CONSOLE}
    log = log_path(settings.local_home)
    print(f"refreshing {settings.home} (Dagster log: {log})", flush=True)
    with open_instance(settings, quiet=not ns.verbose) as instance, open(log, "w") as log_file:
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
        outcome = settle_outcome(instance, result.run_id)
        success, lines = run_summary(instance, result.run_id)
    print("\n".join(lines))
    reason = failure_line(success and result.success, lines)
    if outcome == "refused":
        print(f"churn-assets materialize: {reason}", file=sys.stderr)
        return REFUSED_EXIT
    if reason:
        print(f"churn-assets materialize: {reason}", file=sys.stderr)
        return 1
    return 0


def rescore_risk_list(settings, trigger: str) -> tuple[bool, str]:
    """Rescore the risk list now, as a ``churn_scores`` run of the instance (so the UI and
    the CRM's table show the production model at once); (done, what happened)."""
    from churn_assets.defs.launch import RefreshBusy, run_refresh
    from churn_assets.defs.run_progress import QUIET_CONSOLE, failure_line, run_summary

    with open_instance(settings) as instance:
        try:
            result = run_refresh(settings.local_home, instance, QUIET_CONSOLE, "churn_scores",
                                 extra_tags={"churn_assets/trigger": trigger})
        except RefreshBusy as exc:
            return False, f"not rescored now: {exc}"
        success, lines = run_summary(instance, result.run_id)
    if success and result.success:
        done = [line.strip() for line in lines if line.strip().startswith("risk list:")]
        return True, done[0] if done else "risk list: already scored by production"
    return False, f"rescoring failed (run {result.run_id}): {failure_line(False, lines)}"


def cmd_dev(ns: argparse.Namespace) -> int:
    """``dagster dev`` on the persistent instance, stopped within 5 s of a SIGINT or SIGTERM.

    ``dagster dev`` gives its webserver and daemon a minute each to shut down, and the
    daemon takes that long while a sensor or a run is busy. So it runs in its own process
    group: a signal asks the whole group to stop (SIGINT, what Ctrl-C would send), and
    whatever is still running after the grace period is killed. A run killed this way is
    marked failed by the next ``materialize`` or by run monitoring (defs/liveness.py).
    """
    import signal
    import subprocess
    import threading
    import time

    settings = load_settings()
    require_variables(settings)  # the daemon's scheduled runs would fail on each of them
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)))
    command = [sys.executable, "-m", "churn_assets.cli.dev_child", "dev", "-m", "churn_assets",
               "--host", ns.host, "--port", str(ns.port)]
    stop = threading.Event()
    caught: list[int] = []

    def asked_to_stop(signum, frame):
        caught.append(signum)
        stop.set()

    previous = {s: signal.signal(s, asked_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
        while child.poll() is None and not stop.wait(0.1):
            pass
        if child.poll() is not None:
            return child.returncode  # it ended on its own (a port in use, a bad workspace)
        print(f"churn-assets dev: {signal.Signals(caught[0]).name} received; stopping the UI and daemon",
              file=sys.stderr, flush=True)
        _signal_group(child.pid, signal.SIGINT)
        deadline = time.monotonic() + DEV_GRACE_SECONDS
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(child.pid, signal.SIGKILL)  # stragglers of the group, even if the leader is gone
        child.wait()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # everyone in the group has exited


def add_commands(sub) -> None:
    p = sub.add_parser("materialize", help="run the weekly refresh now, as a churn_refresh run",
                       description="Run the churn_refresh job in this process, recorded in the"
                                   " persistent Dagster instance. Exit codes: 0 deployed or nothing to"
                                   " change, 1 failed, 2 configuration error, 3 another refresh holds the"
                                   " data directory, 4 the gate refused the challenger (production unchanged).")
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
    p = sub.add_parser("dev", help="open the Dagster UI and daemon (schedule, sensors) with persistent state",
                       description="Run the Dagster UI and its daemon (schedule, sensors, run queue) on the"
                                   " persistent instance under the data directory; Ctrl-C or SIGTERM stops"
                                   " both within 5 seconds.")
    p.add_argument("--host", default="127.0.0.1", help="address the UI listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000)")
    p.set_defaults(func=cmd_dev)
