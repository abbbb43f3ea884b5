"""``churn_scores``: this week's churn-risk list, the output a retention team works from.

Every active customer's newest snapshot scored by the production model: probability,
label at the model's threshold, risk decile (1 = riskiest tenth), the three features
pushing hardest toward churn with their effects (log-odds), value at risk, whether the
customer is newly at risk and how the probability moved since the previous list, model
version and scoring time. Written as Parquet under the data directory (replaced
atomically; the file it replaces is the previous list) and, when ``[scores] sql_url_env``
names a variable holding a database URL, upserted by customer into a SQL table a CRM can
read.

The list follows production, whatever changed it: ``scores/state.json``
(storage/risk_list.py) records which version (and sha256) scored the list, written
after the Parquet file and the SQL upsert succeeded. Every run starts by comparing it with the production pointer and rescoring a
stale list (after a rollback, a run killed between its promotion and the end of the
list, an upsert that failed), including runs that then find no new data and skip the
rest of the graph.
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
from churn_assets.defs.outcome import settle_outcome
from churn_assets.defs.resources import ChurnStorage
from churn_assets.defs.risk_report import risk_metadata
from churn_assets.serving.risk_list import build_risk_list, summary_line
from churn_assets.storage import risk_list as risk_list_state
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


def stale_reason(storage: ChurnStorage, risk_list: RiskList, production) -> str | None:
    """Why the list is not the production model's (a ``ModelVersion``), or None if it is
    (storage/risk_list.py reads the record of which version scored it)."""
    return risk_list_state.stale_reason(storage.root, production.version, production.sha256,
                                        risk_list.sql_table if risk_list.sql_url_env else None)


def _production(storage: ChurnStorage):
    """(production ModelVersion or None, predictor loader); registry problems end the step."""
    registry = storage.registry()
    try:
        return registry.production(), registry
    except RegistryError as exc:
        raise dg.Failure(description=f"churn_scores: {exc}", allow_retries=False) from None


def _write_list(context, storage: ChurnStorage, risk_list: RiskList, production, registry) -> dict:
    try:
        predictor = registry.load(production)
    except RegistryError as exc:
        raise dg.Failure(description=f"churn_scores: {exc}", allow_retries=False) from None
    metadata = score_active_customers(context, storage, risk_list, production, predictor)
    # Last: the record names a version only once the whole list holds it.
    risk_list_state.write_state(storage.root, {
        "version": production.version, "sha256": production.sha256, "run_id": context.run.run_id,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "customers": metadata["customers"], "newest_snapshot": metadata.get("newest_snapshot"),
        "sql": {"table": risk_list.sql_table, "version": production.version} if risk_list.sql_url_env else None})
    return metadata


@dg.op(out=dg.Out(dg.Nothing), description="At the start of every run: a risk list not scored by the"
       " production model (a rollback, a run killed after its promotion, a failed SQL upsert) is"
       " rescored now, even if nothing else in the run gets to run.")
def rescore_if_stale(context: dg.OpExecutionContext, storage: ChurnStorage, risk_list: RiskList) -> None:
    production, registry = _production(storage)
    if production is None:
        return
    reason = stale_reason(storage, risk_list, production)
    if reason is None:
        context.log.info(f"the risk list is scored by production {production.version}")
        return
    context.log.info(f"{reason}: rescoring the list with {production.version}")
    metadata = _write_list(context, storage, risk_list, production, registry)
    context.log_event(dg.AssetMaterialization(asset_key="churn_scores", description=f"repaired: {reason}",
                                              metadata={**metadata, "repaired": reason}))


@dg.op(ins={"after": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing, is_required=False),
       description="After deployed_model, or when it did not run: the list scored by production,"
                   " rewritten when deployed_model ran in this run or the list is stale.")
def score_with_production(context: dg.OpExecutionContext, storage: ChurnStorage, risk_list: RiskList):
    settle_outcome(context.instance, context.run.run_id, in_run=True)
    production, registry = _production(storage)
    if production is None:
        # deployed_model did not run (it materializes only with a model in production):
        # a first run that found nothing to train on has no list to write either.
        context.log.info("no model in production yet; no risk list to write")
        return
    latest = context.instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
    decided_now = latest is not None and latest.run_id == context.run.run_id
    reason = stale_reason(storage, risk_list, production)
    if not decided_now and reason is None:
        context.log.info(f"the risk list is already scored by production {production.version}")
        return
    metadata = _write_list(context, storage, risk_list, production, registry)
    yield dg.Output(None, metadata=metadata if decided_now else {**metadata, "repaired": reason})


@dg.graph_asset(group_name="churn", kinds={"pandas", "parquet"},
                ins={"deployed_model": dg.AssetIn(dagster_type=dg.Nothing)})
def churn_scores(deployed_model):
    """Every active customer's newest snapshot scored by the production model.

    Two steps, so the list follows production in every run: ``rescore_if_stale`` first
    (a list left behind by a rollback, a killed run or a failed upsert), and
    ``score_with_production`` once ``deployed_model`` has run or been skipped (fan-in:
    it runs unless every upstream failed), which also rescores the week's snapshots
    whenever ``deployed_model`` ran.
    """
    return score_with_production(after=[deployed_model, rescore_if_stale()])


def score_active_customers(context, storage: ChurnStorage, risk_list: RiskList, production,
                           predictor) -> dict:
    """Score every active customer with ``predictor`` (the version ``production``): reasons,
    value at risk and what changed since the list it replaces; write the Parquet file and,
    with ``[scores] sql_url_env``, upsert the SQL table; the materialization's metadata."""
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
    path = risk_list_state.scores_dir(storage.root) / risk_list_state.LIST_FILE
    previous = read_previous(path)
    scores, summary, explained = build_risk_list(predictor, customers, production.version, scored_at,
                                                 risk_list.chunk_rows, previous)
    buf = io.BytesIO()
    scores.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
    top = scores.nlargest(10, "churn_probability")
    metadata = {
        "customers": len(scores),
        "newest_snapshot": str(customers[spec.timestamp_column].max().date()) if len(customers) else "-",
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
    return metadata
