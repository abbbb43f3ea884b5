"""churn-assets: run the pipeline with persistent state, inspect and roll back models.

One module per group of commands (``run``, ``config``, ``models``, ``score``, ``serve``),
each adding its subcommands with ``add_commands``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import sys

from churn_assets.cli import backtest, config, models, run, score, serve
from churn_assets.cli.config import redact_url
from churn_assets.cli.dagster_home import DAGSTER_YAML, postgres_storage, prepare_dagster_home
from churn_assets.cli.parsing import iso_date
from churn_assets.settings import SettingsError, load_settings

__all__ = ["DAGSTER_YAML", "build_parser", "iso_date", "main", "postgres_storage", "prepare_dagster_home",
           "redact_url"]
COMMAND_GROUPS = (run, config, models, serve, score, backtest)
# Commands that read or write the data directory: on object storage, its bucket is
# checked first, so a missing bucket is not "no model versions" and a dead endpoint is
# one line, not botocore's retries. (serve is left out: it waits for storage to return.)
DATA_COMMANDS = {"materialize", "versions", "card", "rollback", "promote", "unpin", "score"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churn-assets",
        description="Run the churn-model refresh with persistent state, check the configuration,"
                    " inspect and roll back model versions, and serve predictions. State lives"
                    " in $CHURN_ASSETS_HOME (default ~/.churn_assets); settings come from the"
                    " TOML file named by $CHURN_ASSETS_CONFIG.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = sub.add_parser

    def described(name, **kwargs):
        # A subcommand's own --help says what it does even where only a one-line help was given.
        kwargs.setdefault("description", kwargs.get("help"))
        return add_parser(name, **kwargs)

    sub.add_parser = described
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def check_data_directory() -> None:
    """Fail with one line if the data directory is on object storage that cannot be used."""
    from churn_assets.storage import location

    home = location.location(str(load_settings().home))
    if location.is_remote(home):
        location.check_reachable(home)


def _local_home():
    try:
        return load_settings().local_home
    except Exception:  # noqa: BLE001 - only used to word a fault; no settings, no path
        return None


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command in DATA_COMMANDS:
            check_data_directory()
        return ns.func(ns)
    except SettingsError as exc:
        # A configuration mistake is the user's to fix: the reason, not a traceback.
        print(f"churn-assets {ns.command}: configuration error:\n  "
              + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 2
    except Exception as exc:
        # A full, read-only or foreign data directory, or unreachable object storage: the
        # user's to fix as well, so one line naming the path. Anything else is a bug and
        # keeps its traceback.
        from churn_assets.storage.faults import fault_of

        line = fault_of(exc, _local_home())
        if line is None:
            raise
        print(f"churn-assets {ns.command}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
