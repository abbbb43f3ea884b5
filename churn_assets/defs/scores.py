"""``churn_scores``: this week's churn-risk list, the output a retention team works from.

Every active customer's newest snapshot scored by the production model: probability,
label at the model's threshold, risk decile (1 = riskiest tenth), the three features
pushing hardest toward churn with their effects (log-odds), value at risk, whether the
customer is newly at risk and how the probability moved since the previous list, model
version and scoring time. Written as Parquet under the data directory (replaced
atomically; the file it replaces is the previous list) and, when ``[scores] sql_url_env``
names a variable holding a database URL, upserted by customer into a SQL table a CRM can
read.
"""


import datetime as dt
import io
import os

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from churn_assets.core.markdown import md_table
from churn_assets.core.scoring import REASON_COLUMNS, latest_snapshots
from churn_assets.defs.resources import ChurnStorage
from churn_assets.defs.risk_report import risk_metadata
from churn_assets.serving.risk_list import build_risk_list, summary_line
from churn_assets.storage.atomic import atomic_write_bytes
from churn_assets.storage.registry import RegistryError


class RiskList(dg.ConfigurableResource):
    """Who is scored and where the list goes (``[scores]`` settings)."""

    active_within_days: int = 14
    chunk_rows: int = 250_000
    sql_url_env: str = ""
    sql_table: str = "churn_scores"


def active_customers(history: pd.DataFrame, id_column: str, timestamp_column: str,
                     within_days: int) -> pd.DataFrame:
    """Newest snapshot of each customer seen within ``within_days`` of the newest snapshot."""
    latest = latest_snapshots(history, id_column, timestamp_column)
    if latest.empty:
        return latest
    newest = latest[timestamp_column].max()
    recent = latest[timestamp_column] >= newest - pd.Timedelta(days=within_days)
    return latest[recent].reset_index(drop=True)


def upsert_scores(url: str, table_name: str, scores: pd.DataFrame, id_column: str,
                  chunk_rows: int = 20_000) -> int:
    """Insert or replace each customer's row in ``table_name`` (created if absent).

    One transaction: a CRM reading the table sees last week's list or this week's,
    never half of each. Returns the rows written.
    """
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            table_name, metadata,
            sa.Column("customer_id", sa.Text, primary_key=True),
            sa.Column("snapshot_date", sa.DateTime),
            sa.Column("churn_probability", sa.Float),
            sa.Column("churn_label", sa.SmallInteger),
            sa.Column("risk_decile", sa.SmallInteger),
            *[sa.Column(name, sa.Float if name.endswith("effect") else sa.Text) for name in REASON_COLUMNS],
            sa.Column("value_at_risk", sa.Float),
            sa.Column("new_at_risk", sa.Boolean),
            sa.Column("risk_change", sa.Float),
            sa.Column("model_version", sa.Text),
            sa.Column("scored_at", sa.DateTime),
        )
        insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(engine.dialect.name)
        if insert is None:
            raise ValueError(f"churn_scores: upserts are supported on PostgreSQL and SQLite,"
                             f" not {engine.dialect.name}")
        rows = scores.rename(columns={id_column: "customer_id"})
        rows = rows[[c.name for c in table.columns if c.name in rows.columns]]
        rows = rows.assign(customer_id=rows["customer_id"].astype(str))
        with engine.begin() as conn:
            metadata.create_all(conn)
            add_missing_columns(conn, table)
            for start in range(0, len(rows), chunk_rows):
                chunk = rows.iloc[start:start + chunk_rows]
                records = [{k: _sql_value(v) for k, v in r.items()} for r in chunk.to_dict("records")]
                stmt = insert(table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["customer_id"],
                    set_={c: stmt.excluded[c] for c in rows.columns if c != "customer_id"})
                conn.execute(stmt, records)
        return len(rows)
    finally:
        engine.dispose()


def _sql_value(value):
    """A cell as the database driver takes it: datetimes as datetimes, NaN and None as NULL."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def add_missing_columns(conn, table: sa.Table) -> None:
    """Add the columns ``table`` has and the database's table lacks: a table created by
    an older release of this asset gains the new risk-list columns (NULL in old rows)."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))


def read_previous(path) -> pd.DataFrame | None:
    """The list a new run replaces, or None when there is none or it cannot be read (a
    damaged previous list must not stop this week's)."""
    from churn_assets.storage import location

    try:
        if location.is_remote(path):
            payload = location.read_bytes(path)
            return None if payload is None else pd.read_parquet(io.BytesIO(payload))
        return pd.read_parquet(path) if path.exists() else None
    except (OSError, ValueError):
        return None


@dg.asset(group_name="churn", kinds={"pandas", "parquet"}, deps=["deployed_model"])
def churn_scores(context: dg.AssetExecutionContext, storage: ChurnStorage,
                 risk_list: RiskList) -> dg.MaterializeResult:
    """Every active customer's newest snapshot scored by the production model."""
    registry = storage.registry()
    try:
        production = registry.production()
        if production is None:
            raise dg.Failure(description="churn_scores: no model in production yet", allow_retries=False)
        predictor = registry.load(production)
    except RegistryError as exc:
        raise dg.Failure(description=f"churn_scores: {exc}", allow_retries=False) from None
    spec = predictor.spec
    stored = storage.history()
    weeks = stored.weeks()
    # Only the newest weeks can hold an active customer's newest snapshot.
    since = weeks[-1] - pd.Timedelta(days=risk_list.active_within_days + 7) if weeks else None
    history = stored.load(since=since)
    if history is None or history.empty:
        raise dg.Failure(description="churn_scores: the customer history is empty", allow_retries=False)
    customers = active_customers(history, spec.id_column, spec.timestamp_column,
                                 risk_list.active_within_days)
    scored_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
    path = storage.root / "scores" / "churn_scores.parquet"
    previous = read_previous(path)
    scores, summary, explained = build_risk_list(predictor, customers, production.version, scored_at,
                                                 risk_list.chunk_rows, previous)
    buf = io.BytesIO()
    scores.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
    top = scores.nlargest(10, "churn_probability")
    metadata = {
        "production_version": production.version,
        "path": dg.MetadataValue.path(str(path)),
        "predicted_churners": int(scores["churn_label"].sum()),
        "expected_churn_rate": float(scores["churn_probability"].mean()) if len(scores) else 0.0,
        **risk_metadata(scores, summary, explained),
        "top_risk": dg.MetadataValue.md(md_table(
            top.astype({c: str for c in (spec.timestamp_column, "scored_at") if c in top}).to_dict("records"))),
    }
    if risk_list.sql_url_env:
        url = os.environ.get(risk_list.sql_url_env, "")
        if not url:
            raise dg.Failure(description=f"churn_scores: the environment variable"
                                         f" {risk_list.sql_url_env} ([scores] sql_url_env) is not set",
                             allow_retries=False)
        try:
            written = upsert_scores(url, risk_list.sql_table, scores, spec.id_column)
        except sa.exc.SQLAlchemyError as exc:
            safe = sa.engine.make_url(url).render_as_string(hide_password=True)
            raise dg.Failure(description=f"churn_scores: upsert into {risk_list.sql_table} at {safe}"
                                         f" failed: {type(exc).__name__}: {exc.orig if hasattr(exc, 'orig') else exc}")
        metadata["sql_table"] = risk_list.sql_table
        metadata["sql_rows_upserted"] = written
    context.log.info(f"scored {len(scores)} customers with {production.version}: {summary_line(summary)}")
    return dg.MaterializeResult(metadata=metadata)

