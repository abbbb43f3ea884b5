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


def add_commands(sub) -> None:
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
