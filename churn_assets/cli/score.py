"""``score``: a file of customer snapshots scored by a model version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churn_assets.cli.models import _named_or_production, _registry


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _read_records(path: Path, id_column: str):
    import pandas as pd

    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={id_column: str})


def cmd_score(ns: argparse.Namespace) -> int:
    import datetime as dt
    import io

    from churn_assets.serving.risk_list import build_risk_list, summary_line
    from churn_assets.core.scoring import score_customers
    from churn_assets.serving.fast_path import batch_scorer
    from churn_assets.storage.atomic import atomic_write_bytes
    from churn_assets.storage.registry import RegistryError

    output = Path(ns.output)
    kind = OUTPUT_FORMATS.get(output.suffix.lower())
    if kind is None:  # refused before any work: the file would not be what its name says
        print(f"churn-assets score: --output {output}: write .csv or .parquet, not"
              f" {output.suffix or 'a name without an extension'}", file=sys.stderr)
        return 2
    registry = _registry()
    version = _named_or_production(registry, ns.version, "score", "--version v0003")
    if version is None:
        return 2
    try:
        predictor = registry.load(version)
    except RegistryError as exc:
        print(f"churn-assets score: {exc}", file=sys.stderr)
        return 2
    spec = predictor.spec
    source = Path(ns.input)
    try:
        records = _read_records(source, spec.id_column)
        previous = _read_records(Path(ns.previous), spec.id_column) if ns.previous else None
    except (OSError, ValueError) as exc:
        print(f"churn-assets score: cannot read {exc.filename if getattr(exc, 'filename', None) else source}:"
              f" {exc}", file=sys.stderr)
        return 2
    missing = [c for c in [spec.id_column, *spec.feature_columns] if c not in records.columns]
    if missing:
        print(f"churn-assets score: {source} lacks the columns {missing} that {version.version}"
              " needs", file=sys.stderr)
        return 2
    if previous is not None and not {spec.id_column, "churn_probability", "churn_label"} <= set(previous.columns):
        print(f"churn-assets score: --previous {ns.previous} is not a risk list (it needs"
              f" {spec.id_column}, churn_probability and churn_label)", file=sys.stderr)
        return 2
    scored_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    summary = None
    if ns.explain:
        scores, summary, _ = build_risk_list(predictor, records, version.version, scored_at, ns.chunk_rows,
                                             previous)
    else:
        scores = score_customers(predictor, records, version.version, scored_at, ns.chunk_rows,
                                 predict=batch_scorer(predictor))
    buf = io.BytesIO()
    if kind == "csv":
        scores.to_csv(buf, index=False)
    else:
        scores.to_parquet(buf, index=False)
    atomic_write_bytes(output, buf.getvalue())
    print(f"scored {len(scores)} customers with {version.version} -> {output}")
    if summary is not None:
        print(summary_line(summary))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("score", help="score a file of customer snapshots with a model version",
                       description="Write churn probability, label and risk decile for every record"
                                   " of --input (CSV or Parquet) to --output (.csv or .parquet, as its"
                                   " extension says), with the production model or --version. With"
                                   " --explain, also the three strongest reasons, value at risk and,"
                                   " against --previous, who is newly at risk.")
    p.add_argument("--input", required=True, help="customer snapshots, .csv or .parquet, with the spec's columns")
    p.add_argument("--output", required=True, help="where to write the scores: .csv or .parquet")
    p.add_argument("--version", help="model version, e.g. v0003 (default: production)")
    p.add_argument("--chunk-rows", type=int, default=250_000, help="records scored at a time (default 250000)")
    p.add_argument("--explain", action="store_true",
                   help="add reason_1..3 with their effects (log-odds), value_at_risk, new_at_risk and"
                        " risk_change, and print the run's summary")
    p.add_argument("--previous", help="with --explain: last week's list (.csv or .parquet) to compare with")
    p.set_defaults(func=cmd_score)
