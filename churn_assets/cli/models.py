"""``versions``, ``card`` and ``rollback``: the model registry from the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from churn_assets.cli.dagster_home import prepare_dagster_home
from churn_assets.settings import load_settings


def _registry():
    from churn_assets.storage.object_registry import open_registry

    return open_registry(load_settings().home / "registry")


def cmd_versions(ns: argparse.Namespace) -> int:
    from churn_assets.defs.history_text import format_history
    from churn_assets.defs.reporting import registry_history
    from churn_assets.storage.registry import RegistryError
    from churn_assets.storage.risk_list import read_state

    settings = load_settings()
    registry = _registry()
    risk_list = None
    try:
        production = registry.production()
    except RegistryError:
        production = None  # reported among the problems below
    if production is not None:
        risk_list = {"state": read_state(settings.home),
                     "stale": _risk_list_status(settings, production.version, production.sha256)}
    history = registry_history(registry, risk_list)
    problems = history["problems"] + [str(p) for p in registry.problems()]
    for problem in problems:  # damaged files: one line each, never a traceback
        print(f"warning: {problem}", file=sys.stderr)
    if ns.json:
        print(json.dumps(dict(history, problems=problems), indent=2, default=str))
        return 0
    print(format_history(history))
    return 0


def _operator(action: str) -> str:
    """Who changed production by hand, as the pin records it: "alice (churn-assets rollback)"."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown user"
    return f"{user} (churn-assets {action})"


def _report_to_dagster(settings, event) -> str | None:
    """Record ``event`` (a runless materialization or observation) in the instance; the
    problem in one line if that failed. Best effort: the registry already changed, and a
    locked or missing instance must not turn a finished rollback into an error."""
    try:
        import dagster as dg

        dagster_home = prepare_dagster_home(settings.local_home, settings.dagster.postgres_url_env)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            instance.report_runless_asset_event(event)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal (see above)
        return f"{type(exc).__name__}: {exc}"
    return None


def _report_production_to_dagster(settings, pointer: dict, action: str, risk_list: str) -> str | None:
    """A runless materialization of ``deployed_model``: the UI shows the version really in
    production, its pin and the state of the risk list."""
    import dagster as dg

    from churn_assets.defs.reporting import production_pages
    from churn_assets.storage.pointer import pin_text
    from churn_assets.storage.registry import RegistryError

    try:
        history, shown = production_pages(_registry(), settings.intended_use())
        card = shown[1] if shown else "model card unavailable: no version in production"
    except (RegistryError, OSError) as exc:  # the pointer moved; the card is a nicety
        card, history = f"model card unavailable: {exc}", f"registry history unavailable: {exc}"
    return _report_to_dagster(settings, dg.AssetMaterialization(
        asset_key="deployed_model",
        description=f"{action} outside a run: production is {pointer['version']}, "
                    + (pin_text(pointer) or "not pinned"),
        metadata={"production_version": pointer["version"], "previous_version": str(pointer.get("previous")),
                  "new_version": False, "reason": str(pointer.get("reason") or action),
                  "sha256": pointer.get("sha256", ""), "pinned": pin_text(pointer) or "no",
                  "risk_list": risk_list, "changed_by": _operator(action),
                  "history": dg.MetadataValue.md(history), "card_version": pointer["version"],
                  "model_card": dg.MetadataValue.md(card)}))


def _risk_list_status(settings, version: str, sha256: str) -> str | None:
    """Why the risk list is not scored by ``version``, or None if it is."""
    from churn_assets.storage.risk_list import stale_reason

    scores = settings.scores
    return stale_reason(settings.home, version, sha256, scores.sql_table if scores.sql_url_env else None)


def _after_manual_change(pointer: dict, action: str) -> int:
    """Report a rollback or promotion by hand: the pin, the UI, and the risk list rescored
    with the version now in production (so the CRM's list follows production at once)."""
    from churn_assets.cli.run import rescore_risk_list
    from churn_assets.storage.pointer import pin_text
    from churn_assets.storage.risk_list import list_exists

    settings = load_settings()
    print(f"production is now {pointer['version']} (was {pointer['previous']}), {pin_text(pointer)}.")
    print("  Refreshes keep training and evaluating, and record passing challengers as held, until"
          " `churn-assets unpin`.")
    stale = _risk_list_status(settings, pointer["version"], pointer["sha256"])
    state = f"{stale}; rescored now" if stale else "already scored by it"
    problem = _report_production_to_dagster(settings, pointer, action, state)
    if problem:
        print(f"warning: the Dagster instance was not told about the {action} ({problem});"
              " the registry is correct, the UI may show the old version", file=sys.stderr)
    if stale is None:
        print(f"  risk list: already scored by {pointer['version']}")
        return 0
    if not list_exists(settings.home):
        print("  risk list: none written yet; the next refresh writes it")
        return 0
    done, what = rescore_risk_list(settings, action)
    if done:
        print(f"  {what}")
        return 0
    print(f"warning: {stale}; {what}. The next run rescores it before anything else"
          " (or run `churn-assets materialize --select churn_scores`).", file=sys.stderr)
    _report_stale_list(settings, stale)
    return 0


def _report_stale_list(settings, stale: str) -> None:
    """The UI's churn_scores page says the list is stale until a run rescores it."""
    import dagster as dg

    _report_to_dagster(settings, dg.AssetObservation(
        asset_key="churn_scores", description=f"stale: {stale}; the next run rescores it",
        metadata={"stale": stale}))


def cmd_rollback(ns: argparse.Namespace) -> int:
    from churn_assets.storage.registry import RegistryError

    try:
        pointer = _registry().rollback(to=ns.to, pinned_by=_operator("rollback"))
    except RegistryError as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 2
    return _after_manual_change(pointer, "rollback")


def cmd_promote(ns: argparse.Namespace) -> int:
    from churn_assets.storage.pointer import pin_of
    from churn_assets.storage.registry import RegistryError

    registry = _registry()
    try:
        current = registry.production_pointer()
        if current and current["version"] == ns.version and pin_of(current):
            raise RegistryError(f"{ns.version} is already in production and pinned")
        was = current["version"] if current else None
        pointer = registry.promote(ns.version, reason=f"promoted by hand (was {was})",
                                   pinned_by=_operator("promote"))
    except RegistryError as exc:
        print(f"promote failed: {exc}", file=sys.stderr)
        return 2
    return _after_manual_change(pointer, "promote")


def cmd_unpin(ns: argparse.Namespace) -> int:
    from churn_assets.storage.registry import RegistryError

    try:
        pointer = _registry().unpin(by=_operator("unpin"))
    except RegistryError as exc:
        print(f"unpin failed: {exc}", file=sys.stderr)
        return 2
    version = pointer["version"]
    print(f"production {version} is no longer pinned. Refreshes may promote again: the next one that"
          f" trains a challenger (new data, or the data of a held challenger) promotes it if it passes"
          f" the gate against {version}.")
    problem = _report_production_to_dagster(load_settings(), pointer, "unpin", "unchanged")
    if problem:
        print(f"warning: the Dagster instance was not told about the unpin ({problem})", file=sys.stderr)
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
    from churn_assets.storage.pointer import production_status
    from churn_assets.storage.registry import RegistryError

    registry = _registry()
    version = _named_or_production(registry, ns.version, "card", "churn-assets card v0003")
    if version is None:
        return 2
    try:
        status = production_status(registry.production_pointer(), version.version)
    except RegistryError:
        status = None  # a damaged pointer: `versions` names it; the card itself is fine
    print(card_text(version, load_settings().intended_use(), status), end="")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("versions", help="list model versions, production changes and challengers not deployed",
                       description="Every registered version with the comparison that decided it (challenger"
                                   " vs champion on the same holdout, the deltas, the gate), the production"
                                   " pointer and its pin, the risk list's model, every promotion, rollback"
                                   " and unpin, and the challengers refused or held. * marks production.")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("card", help="print the model card of a version (default: production)",
                       description="Print the model card (markdown) of a version: intended use, data window,"
                                   " metrics against its champion with intervals, the gate's rules, plots.")
    p.add_argument("version", nargs="?", help="version, e.g. v0003 (default: the production version)")
    p.set_defaults(func=cmd_card)
    p = sub.add_parser("rollback", help="move production back to an earlier version and pin it there",
                       description="Move production back to an earlier version and pin it: refreshes keep"
                                   " training and recording challengers, but none is promoted until"
                                   " `churn-assets unpin`. The risk list is rescored with it at once.")
    p.add_argument("--to", help="version, e.g. v0003 (default: the newest older than production)")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("promote", help="put a version of your choice in production and pin it there",
                       description="Promote a registered version by hand and pin it, like a rollback: no"
                                   " refresh replaces it until `churn-assets unpin`. The risk list is"
                                   " rescored with it at once.")
    p.add_argument("version", help="version, e.g. v0003")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("unpin", help="let refreshes promote again after a rollback or promote",
                       description="Remove the operator's pin: production stays where it is, and the next"
                                   " refresh that trains a challenger may promote it if it passes the gate.")
    p.set_defaults(func=cmd_unpin)
