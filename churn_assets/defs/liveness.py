"""Is a run's process still alive? Dead runs must not hold the refresh slot (issue 8).

A refresh killed with SIGKILL (OOM killer, a reboot, ``kill -9``) never writes its own
failure: Dagster keeps it ``STARTED`` forever, so the schedule and the sensor, which
skip while a refresh is in progress, would skip forever, and no failure alert fires.

Two pieces fix that:

* ``run_liveness`` decides from the run's process id: the ``churn_assets/pid`` tag
  (set by ``churn-assets materialize``) or the pid Dagster records on the run's
  ``RUN_START`` event. ``os.kill(pid, 0)`` says whether it exists; the process's start
  time in ``/proc`` guards against a recycled pid. A run started on another host (the
  ``churn_assets/host`` tag), or without a known pid, counts as dead only when it has
  logged nothing for ``STALE_AFTER_SECONDS``.
* ``ChurnRunLauncher``: Dagster's default launcher plus a worker health check built on
  ``run_liveness``, so the daemon's run monitoring (``run_monitoring`` in the
  dagster.yaml that ``churn-assets`` writes) marks a dead run FAILED within one poll
  interval. The default launcher has no health check, so monitoring alone would only
  catch start and cancel timeouts.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus

PID_TAG = "churn_assets/pid"
HOST_TAG = "churn_assets/host"
# A refresh with no event at all for this long, and no process we can check, is dead:
# the slowest step measured (1M-row training, BENCHMARKS.md) takes minutes, not hours.
STALE_AFTER_SECONDS = 6 * 3600
# QUEUED: waiting for the run queue, no process yet; it holds nothing.
NO_PROCESS_YET = {dg.DagsterRunStatus.QUEUED}


@dataclass(frozen=True)
class Liveness:
    alive: bool
    reason: str


def host_tags() -> dict[str, str]:
    """Tags for a run that this host will execute (CLI runs, schedule and sensor requests)."""
    return {HOST_TAG: socket.gethostname()}


def _run_start(instance: dg.DagsterInstance, run_id: str):
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    return records[0].event_log_entry if records else None


def _last_event_time(instance: dg.DagsterInstance, run_id: str) -> float | None:
    records = instance.get_records_for_run(run_id=run_id, limit=1, ascending=False).records
    return records[0].event_log_entry.timestamp if records else None


def _process_started_at(pid: int) -> float | None:
    """Start time (epoch seconds) of ``pid`` from /proc, None where /proc is missing.
    A zombie (killed, not yet reaped) counts as gone: it runs nothing."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    if fields[0] in ("Z", "X"):
        return float("inf")
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, not_started_after: float | None = None) -> bool:
    """Whether ``pid`` runs here and, if ``not_started_after`` is given, started no later
    than that (a process started after the run began is a recycled pid, not the run)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = _process_started_at(pid)
    if started is None:
        return True  # no /proc: existence is all we can tell
    if started == float("inf"):
        return False
    # /proc start times have clock-tick resolution; allow a little slack.
    return not_started_after is None or started <= not_started_after + 2.0


def _own_tag(instance: dg.DagsterInstance, run: dg.DagsterRun, key: str) -> str | None:
    """``run``'s tag ``key``, unless a re-execution copied it from the parent run: the UI
    re-executes a ``materialize`` run with its tags, and the parent's pid is not this run's."""
    value = run.tags.get(key)
    if value is not None and run.parent_run_id:
        parent = instance.get_run_by_id(run.parent_run_id)
        if parent is not None and parent.tags.get(key) == value:
            return None
    return value


def run_liveness(instance: dg.DagsterInstance, run: dg.DagsterRun,
                 stale_after: float = STALE_AFTER_SECONDS) -> Liveness:
    """Whether ``run`` (queued, starting, started or canceling) still has a live process."""
    if run.status in NO_PROCESS_YET:
        return Liveness(True, "queued; no process yet")
    start = _run_start(instance, run.run_id)
    pid = _own_tag(instance, run, PID_TAG) or (start.dagster_event.pid if start and start.dagster_event else None)
    host = run.tags.get(HOST_TAG)
    if pid and (host is None or host == socket.gethostname()):
        began = start.timestamp if start else None
        if process_alive(int(pid), began):
            return Liveness(True, f"process {pid} is running")
        return Liveness(False, f"its process {pid} on this host is gone (killed or crashed)")
    last = _last_event_time(instance, run.run_id)
    if last is not None and time.time() - last > stale_after:
        return Liveness(False, f"no event for {int(time.time() - last)} s"
                               f" (more than {int(stale_after)} s) and no process to check here")
    return Liveness(True, "no process to check here; logged recently")


class ChurnRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, plus a worker health check for run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        verdict = run_liveness(self._instance, run)
        status = WorkerStatus.RUNNING if verdict.alive else WorkerStatus.FAILED
        return CheckRunHealthResult(status, msg=verdict.reason)
