"""The refresh's thread budget: how many threads scikit-learn's OpenMP and BLAS may use.

On a machine shared with other jobs, OpenMP workers that outnumber the free cores wait
at every barrier for a descheduled sibling (histogram gradient boosting synchronises
after every tree node): a 1 M-row refresh took 503 s beside other jobs against 52 s
alone (BENCHMARKS.md). The budget caps the pools for the whole in-process run.

Set ``CHURN_ASSETS_THREADS`` to a number (e.g. 1 on a box where another CPU-bound job
runs), to ``load`` (the CPUs minus the load average when the run starts), or leave it
empty / ``auto``: the CPUs this process may run on (``os.sched_getaffinity``), which
also honours ``taskset`` and cpusets. ``auto`` is what scikit-learn would use anyway;
on a busy machine only a smaller budget helps (BENCHMARKS.md, "History at scale").

OpenMP limits are per thread (threadpoolctl issue #207): the limit must be entered in
the thread that runs the steps. It is, because the ``TrainingPlan`` resource enters it
when the run initialises it (``defs/resources.py``) and the in-process executor runs
every step in that same thread.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

ENV_VAR = "CHURN_ASSETS_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_aware_budget() -> int:
    """The CPUs left over by other runnable work: available CPUs minus the 1-minute load
    average (rounded), at least 1. Sampled when the run starts, so it is a heuristic: a
    job that starts later is not seen."""
    return max(1, available_cpus() - round(os.getloadavg()[0]))


def thread_budget_size(value: str | int | None = None) -> int:
    """The budget named by ``value``, or by ``$CHURN_ASSETS_THREADS`` when ``value`` is None."""
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    text = str(raw).strip().lower()
    if text in ("", "auto", "0"):
        return available_cpus()
    if text == "load":
        return load_aware_budget()
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{ENV_VAR}={raw!r}: expected a number of threads >= 1, 'auto' or 'load'")
    return threads


@contextmanager
def thread_budget(value: str | int | None = None):
    """Cap OpenMP and BLAS thread pools at the budget inside the block; yields the budget."""
    threads = thread_budget_size(value)
    # threadpoolctl limits only libraries already loaded: load scikit-learn's OpenMP
    # runtime (and numpy's BLAS) first, so a step that imports them later is covered too.
    import sklearn.utils._openmp_helpers  # noqa: F401

    with threadpool_limits(limits=threads):
        yield threads
