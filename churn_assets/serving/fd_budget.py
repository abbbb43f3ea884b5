"""Keep file descriptors free for new clients by closing the slowest request senders.

A worker process holds one descriptor per connection, and its open-files limit (often
1024, and not always raisable: the hard limit caps ``ulimit -n``) is the real cap on
connections. A thousand clients that send their headers and then trickle a body hold a
descriptor each until the body deadline (30 s). Once the table is full, ``accept()``
fails: libuv resets new connections or leaves them in the listen backlog, the registry
poll cannot open ``production.json``, and every healthy client waits for the deadline.

``DescriptorBudget`` keeps ``spare`` descriptors free. When the connections plus the
process's other descriptors reach ``limit - spare``, it closes connections that are
still sending their request (headers or body) and have done so for at least ``grace``
seconds, slowest first (fewest bytes per second in the current phase), until
``2 * spare`` descriptors are free again. A connection whose request has arrived, is
being answered, or idles between requests is never chosen, and neither is a body that
will make its deadline at its pace so far: the descriptors come from clients that a
deadline would mostly cut anyway (a body that cannot arrive in time, headers still
missing after a second), only sooner. If too few are old enough to judge, it tries
again ``grace / 2`` later, so the budget recovers even when no new connection can be
accepted to trigger it.

The budget does not know about HTTP: it asks each connection for ``shed_rank(now,
grace)`` (None: not to be shed; else lower is shed first) and tells the chosen ones
``shed()``. The HTTP protocol (``guard.py``) ranks by bytes per second in the current
phase and never offers a body that, at its pace so far, will arrive before its deadline.
"""

from __future__ import annotations

import heapq
import logging
import os
import resource
import time
from collections.abc import Callable, Collection

log = logging.getLogger("churn_assets.serving")
MIN_SPARE = 32  # descriptors always kept free, whatever the limit
SPARE_FRACTION = 16  # ... or 1/16 of the limit if more: 64 at the common 1024
GRACE_SECONDS = 1.0  # a client gets this long in a phase before its rate is judged
LOG_EVERY_SECONDS = 10.0  # one summary line, not one per connection, under an attack
REMEASURE_SECONDS = 1.0  # near the limit, the other descriptors are counted again this often
UNMEASURED_OTHER = 64  # descriptors assumed besides connections if they could never be counted


def open_descriptors() -> int | None:
    """How many descriptors this process holds (Linux ``/proc``), or None if unknown."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return None


def soft_fd_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when it is unlimited (nothing to budget)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class DescriptorBudget:
    """Sheds the slowest request-receiving connections when descriptors run low.

    ``limit``: descriptors this process may hold (its soft RLIMIT_NOFILE).
    ``spare``: descriptors kept free; default ``max(32, limit // 16)``.
    ``grace``: seconds a connection spends in a phase before it may be shed.
    ``count_open``: returns the descriptors held now (None if unknown); called at the
    first connection and then only near the limit, so the per-connection check is one
    addition and one compare.
    """

    def __init__(self, limit: int, spare: int | None = None, grace: float = GRACE_SECONDS,
                 count_open: Callable[[], int | None] = open_descriptors):
        self.limit = limit
        self.spare = spare if spare is not None else max(MIN_SPARE, limit // SPARE_FRACTION)
        self.grace = grace
        self.count_open = count_open
        self.other: int | None = None  # descriptors besides connections, as last measured
        self.shed_count = 0  # connections closed since the last log line
        self.shed_total = 0
        self._retry = None  # the pending TimerHandle while pressure lasts
        self._measured_at = 0.0  # loop time of the last count of open descriptors
        self._logged_at = 0.0

    def _measure_other(self, held: int | None, connections: int, now: float) -> int:
        # Listing /proc/self/fd needs a descriptor itself: with none left, keep the last count.
        if held is not None:
            self.other = max(0, held - connections)
        elif self.other is None:
            self.other = UNMEASURED_OTHER
        self._measured_at = now
        return self.other

    def check(self, connections: Collection, loop) -> int:
        """Called for each new connection: nothing but an addition and a compare unless
        descriptors are close to running out; then ``relieve``. Returns how many were shed."""
        if self.other is None:
            self._measure_other(self.count_open(), len(connections), loop.time())
        used = self.other + len(connections)
        if used < self.limit - 2 * self.spare:
            return 0
        # Within reach of the limit: the other descriptors may have grown since measured.
        if used < self.limit - self.spare and loop.time() - self._measured_at < REMEASURE_SECONDS:
            return 0
        return self.relieve(connections, loop)

    def relieve(self, connections: Collection, loop) -> int:
        """If fewer than ``spare`` descriptors are free, shed the slowest receiving
        connections until ``2 * spare`` are; returns how many were shed. Tries again
        ``grace / 2`` later while too few could be shed."""
        now = loop.time()
        held = self.count_open()
        live, judged = 0, []
        for conn in list(connections):
            transport = getattr(conn, "transport", None)
            if transport is None or transport.is_closing():
                continue  # shed or closed: its descriptor is gone or about to be
            live += 1
            shed_rank = getattr(conn, "shed_rank", None)  # e.g. a WebSocket: never shed
            rank = shed_rank(now, self.grace) if shed_rank is not None else None
            if rank is not None:
                judged.append((rank, id(conn), conn))
        used = self._measure_other(held, live, now) + live
        if used < self.limit - self.spare:
            return 0
        excess = used - (self.limit - 2 * self.spare)
        victims = heapq.nsmallest(excess, judged)
        for _, _, conn in victims:
            conn.shed()
        self._note(len(victims), live)
        if len(victims) < excess and self._retry is None:
            self._retry = loop.call_later(self.grace / 2, self._again, connections, loop)
        return len(victims)

    def _again(self, connections: Collection, loop) -> None:
        self._retry = None
        self.relieve(connections, loop)

    def _note(self, shed: int, connections: int) -> None:
        self.shed_count += shed
        self.shed_total += shed
        now = time.monotonic()
        if self.shed_count and now - self._logged_at >= LOG_EVERY_SECONDS:
            log.warning("file descriptors low (%d connections, %d other descriptors, limit %d): closed %d"
                        " connections that were sending their request slowest", connections, self.other,
                        self.limit, self.shed_count)
            self.shed_count = 0
            self._logged_at = now
