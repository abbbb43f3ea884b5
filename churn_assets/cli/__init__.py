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
from churn_assets.settings import SettingsError

__all__ = ["DAGSTER_YAML", "build_parser", "iso_date", "main", "postgres_storage", "prepare_dagster_home",
           "redact_url"]
COMMAND_GROUPS = (run, config, models, serve, score, backtest)


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


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except SettingsError as exc:
        # A configuration mistake is the user's to fix: the reason, not a traceback.
        print(f"churn-assets {ns.command}: configuration error:\n  "
              + str(exc).replace("\n", "\n  "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
