"""Running one refresh from the command line, as a ``churn_refresh`` run of the instance.

The run is recorded in the persistent instance with the refresh tag, so the schedule,
the sensors and the run queue see it, and a file lock on the data directory keeps a
second ``churn-assets materialize`` from starting while it runs (the lock dies with the
process, so a killed run never leaves it held).
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import (ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin,
                                         RemoteRepositoryOrigin)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from churn_assets.defs.liveness import PID_TAG, host_tags
from churn_assets.defs.schedules import REFRESH_TAG, churn_refresh, dead_refreshes, refresh_in_progress


# `churn-assets dev` and `dagster dev -m churn_assets` name the code location after the module.
CODE_LOCATION = "churn_assets"


class RefreshBusy(RuntimeError):
    """Another refresh holds this data directory."""


@contextmanager
def refresh_lock(home: Path):
    """Hold ``home/.refresh.lock`` exclusively, or raise ``RefreshBusy`` at once."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / ".refresh.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RefreshBusy(f"a refresh is already running on {home} ({holder}); wait for it"
                              " to finish (churn-assets dev shows it), then try again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refresh_run_config(as_of: str = "", families: list[str] | None = None,
                       seed: int | None = None) -> dict:
    """Run config of ``churn_refresh``: the per-run values, never environment variables."""
    ops: dict = {}
    if as_of:
        ops["raw_customers"] = {"config": {"as_of": as_of}}
    model: dict = {}
    if families:
        model["families"] = list(families)
    if seed is not None:
        model["seed"] = seed
    if model:
        ops["churn_model"] = {"config": model}
    return {"ops": ops} if ops else {}


def refresh_job() -> dg.JobDefinition:
    """``churn_refresh`` of the current settings (module level, so it is reconstructable)."""
    from churn_assets.defs.definitions import build_defs

    return build_defs().resolve_job_def(churn_refresh.name)


def fail_dead_refreshes(instance: dg.DagsterInstance) -> list[str]:
    """Mark refreshes whose process is gone as failed; their ids.

    Run monitoring in the daemon does this within a poll interval; a data directory used
    only from the command line has no daemon, so ``materialize`` does it before it
    starts. Only runs judged dead by ``defs.liveness`` (their pid is gone from this host,
    or nothing was logged for hours) are touched. The RUN_FAILURE event this writes is
    what the failure alert sensor reports.
    """
    failed = []
    for run, reason in dead_refreshes(instance):
        instance.report_run_failed(run, f"churn-assets: refresh run {run.run_id} stopped without"
                                        f" finishing: {reason}. Marked failed before starting a"
                                        " new refresh.")
        failed.append(run.run_id)
    return failed


def run_refresh(home: Path, instance: dg.DagsterInstance, run_config: dict,
                select: str = "*", extra_tags: dict | None = None) -> dg.ExecutionResult:
    """Execute ``churn_refresh`` in this process as a run of ``instance``.

    The run carries this process's pid and host as tags, so ``defs.liveness`` can tell a
    killed ``materialize`` from a running one, and the code location's origin, so the UI
    treats it like a run it launched (``remote_job_origin``).
    """
    with refresh_lock(home):
        fail_dead_refreshes(instance)
        running = refresh_in_progress(instance)
        if running:
            raise RefreshBusy(f"refresh run {running} is queued or running in the instance;"
                              " wait for it to finish, then try again")
        selection = None if select in ("*", "") else [dg.AssetKey.from_user_string(k)
                                                       for k in select.split(",")]
        tags = {REFRESH_TAG: "true", PID_TAG: str(os.getpid()), **host_tags(), **(extra_tags or {})}
        job = dg.reconstructable(refresh_job)
        # Dagster keeps the last job definition of a pointer per process; a second refresh
        # in one process (a test, a notebook) must see the settings as they are now.
        type(job).get_definition.cache_clear()
        type(job).get_repository_definition.cache_clear()
        job = job.with_repository_load_data(job.repository.get_definition().repository_load_data)
        job_def = job.get_definition()
        # As dg.execute_job would create it, plus the code location's origin: the UI then
        # lists the run on its front page and links (and re-executes) it like its own.
        run = instance.create_run_for_job(
            job_def=job_def, run_config=run_config, tags={**job_def.run_tags, **tags},
            asset_selection=frozenset(selection) if selection else None,
            job_code_origin=job.get_python_origin(), remote_job_origin=remote_job_origin(job_def.name),
            repository_load_data=job.repository.get_definition().repository_load_data)
        return execute_run(job, run, instance, raise_on_error=False)


def remote_job_origin(job_name: str) -> RemoteJobOrigin:
    """The origin a run of ``job_name`` launched from the UI of ``churn-assets dev`` (or
    ``dagster dev -m churn_assets``) has: the code location is named after the module and
    holds one repository, the ``Definitions``'. The UI finds a run's job by these two
    names, so a run executed here is shown, linked and re-executed as one of its own."""
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=CODE_LOCATION,
                                  working_directory=os.getcwd())
    location = ManagedGrpcPythonEnvCodeLocationOrigin(loadable_target_origin=target, location_name=CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)
