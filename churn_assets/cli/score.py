"""``score``: a file of customer snapshots scored by a model version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churn_assets.cli.models import _named_or_production, _registry


def cmd_score(ns: argparse.Namespace) -> int:
    import datetime as dt

    import pandas as pd

    from churn_assets.core.scoring import score_customers
    from churn_assets.serving.fast_path import batch_scorer
    from churn_assets.storage.atomic import atomic_write_bytes
    from churn_assets.storage.registry import RegistryError

    registry = _registry()
    version = _named_or_production(registry, ns.version, "score", "--version v0003")
    if version is None:
        return 2
    try:
        predictor = registry.load(version)
    except RegistryError as exc:
        print(f"churn-assets score: {exc}", file=sys.stderr)
        return 2
    source = Path(ns.input)
    try:
        records = (pd.read_parquet(source) if source.suffix.lower() in (".parquet", ".pq")
                   else pd.read_csv(source, dtype={predictor.spec.id_column: str}))
    except (OSError, ValueError) as exc:
        print(f"churn-assets score: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    missing = [c for c in [predictor.spec.id_column, *predictor.spec.feature_columns]
               if c not in records.columns]
    if missing:
        print(f"churn-assets score: {source} lacks the columns {missing} that {version.version}"
              " needs", file=sys.stderr)
        return 2
    scored_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    scores = score_customers(predictor, records, version.version, scored_at, ns.chunk_rows,
                             predict=batch_scorer(predictor))
    import io

    buf = io.BytesIO()
    scores.to_parquet(buf, index=False)
    atomic_write_bytes(Path(ns.output), buf.getvalue())
    print(f"scored {len(scores)} customers with {version.version} -> {ns.output}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("score", help="score a file of customer snapshots with a model version",
                       description="Write churn probability, label and risk decile for every record"
                                   " of --input (CSV or Parquet) to --output (Parquet), with the"
                                   " production model or --version.")
    p.add_argument("--input", required=True, help="customer snapshots, .csv or .parquet, with the spec's columns")
    p.add_argument("--output", required=True, help="where to write the scores (.parquet)")
    p.add_argument("--version", help="model version, e.g. v0003 (default: production)")
    p.add_argument("--chunk-rows", type=int, default=250_000, help="records scored at a time (default 250000)")
    p.set_defaults(func=cmd_score)
