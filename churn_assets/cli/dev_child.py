"""``python -m churn_assets.cli.dev_child ARGS`` is ``dagster ARGS`` (``dev …``) without the
notice that ``dagster dev`` is superseded by the separate ``dg`` CLI: churn-assets does
not use ``dg``, so the notice is nothing its user can act on. ``churn-assets dev`` runs
this as its child process (cli/run.py)."""

import sys
import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.SupersessionWarning)

from dagster._cli import main  # noqa: E402 - after the filter, which must see the import's warnings

sys.argv = ["dagster", *sys.argv[1:]]
sys.exit(main())
