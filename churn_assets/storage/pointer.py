"""The production pointer's records: promotions, the operator's pin, and unpinning.

``production.json`` names the version in production. When the operator chose that
version by hand (``churn-assets rollback`` or ``churn-assets promote``) the pointer also
carries a pin::

    {"version": "v0007", "sha256": "…", "promoted_at": "…", "previous": "v0009",
     "reason": "rollback from v0009", "run_id": null,
     "pinned": {"at": "2026-05-12T09:14:03+00:00", "by": "alice (churn-assets rollback)"}}

A pinned pointer refuses automatic promotions (``ModelRegistry.promote(...,
unless_pinned=True)`` raises ``PinnedError``), so refreshes keep training and evaluating
but record their challengers as held, until ``unpin`` rewrites the pointer without the
pin (and with ``unpinned_at``). The pin lives in the pointer itself, so it is written
by the same atomic replace (or single PUT) that moves production, and a kill can never
leave a pinned version without its pin or a pin without its version.

One shape for the local and the object-storage registry; plain dicts, no I/O.
"""

from __future__ import annotations

import datetime as dt


class PinnedError(RuntimeError):
    """Production is pinned by the operator; automatic promotions wait for ``unpin``."""

    def __init__(self, pointer: dict) -> None:
        self.pointer = pointer
        super().__init__(f"production {pointer.get('version')} is pinned by the operator"
                         f" ({pin_text(pointer)}); run `churn-assets unpin` to let refreshes promote again")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def shown_time(iso: str | None, seconds: bool = True) -> str:
    """"2026-05-12 09:14:03 UTC" from a stored ISO time (the text itself if unparsable)."""
    try:
        moment = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if seconds else f"{moment:%Y-%m-%d %H:%M} UTC"


def pin_of(pointer: dict | None) -> dict | None:
    """The pin of a pointer, or None when refreshes may promote."""
    pin = (pointer or {}).get("pinned")
    return pin if isinstance(pin, dict) and pin.get("at") else None


def pin_text(pointer: dict | None) -> str:
    """"pinned by alice (churn-assets rollback) at 2026-05-12 09:14:03 UTC", or ""."""
    pin = pin_of(pointer)
    if pin is None:
        return ""
    return f"pinned by {pin.get('by') or 'the operator'} at {shown_time(pin['at'])}"


def held_reason(pointer: dict) -> str:
    """What a challenger that passed the gate while production was pinned is recorded as."""
    pin = pin_of(pointer) or {}
    return f"held: production pinned by the operator at {shown_time(pin.get('at'))}"


def manual_change_at(pointer: dict | None) -> str | None:
    """When the operator last changed production by hand (pin or unpin), ISO time or None.

    Health alarms raised before this moment were about a choice the operator has since
    overridden; they never start a refresh by themselves (defs/monitoring.py)."""
    pointer = pointer or {}
    pin = pin_of(pointer)
    return (pin or {}).get("at") or pointer.get("unpinned_at")


def production_status(pointer: dict | None, version: str) -> str:
    """One sentence for ``version``'s model card: in production or not, and the pin."""
    pointer = pointer or {}
    if pointer.get("version") != version:
        return (f"Not in production (production is {pointer['version']})." if pointer.get("version")
                else "Not in production (nothing is).")
    text = f"In production since {shown_time(pointer.get('promoted_at'))}"
    if pin_of(pointer):
        return text + f", {pin_text(pointer)}: no refresh replaces it until `churn-assets unpin`."
    return text + "."


def raised_before(recorded_at, changed_at: str | None) -> bool:
    """Whether something recorded at ``recorded_at`` (ISO) predates the operator's change
    at ``changed_at`` (``manual_change_at``); an undated record counts as older. Both are
    whole seconds: a record of the same second counts as newer (an alarm the operator could
    not yet have seen when acting)."""
    if not changed_at:
        return False
    try:
        return dt.datetime.fromisoformat(str(recorded_at)) < dt.datetime.fromisoformat(changed_at)
    except (TypeError, ValueError):
        return True


def promotion_records(target, previous: str | None, note: dict, reason: str, run_id: str | None,
                      pinned_by: str | None = None) -> tuple[dict, dict]:
    """The pointer naming ``target`` (a ``ModelVersion``) and its events.jsonl record.

    ``pinned_by`` (who chose it by hand) pins the new pointer; None for a refresh."""
    pointer = {"version": target.version, "sha256": target.sha256, "promoted_at": now(),
               "previous": previous, "reason": reason, "run_id": run_id}
    if pinned_by:
        pointer["pinned"] = {"at": pointer["promoted_at"], "by": pinned_by}
    return pointer, {"event": "promote", **pointer, **note}


def unpin_records(current: dict, by: str) -> tuple[dict, dict]:
    """``current`` without its pin, and the events.jsonl record of the unpin."""
    at = now()
    pointer = {k: v for k, v in current.items() if k not in ("pinned", "unpinned_at", "unpinned_by")}
    pointer.update(unpinned_at=at, unpinned_by=by)
    return pointer, {"event": "unpin", "version": current.get("version"), "at": at, "by": by,
                     "pinned": pin_of(current)}
