"""Customer records from a SQL database through SQLAlchemy (SQLite, PostgreSQL, ...).

Reads a table (reflected, so a missing table or watermark column is named clearly) or
a query, only the rows whose ``updated_at`` column is past the watermark, in chunks
from a server-side cursor (``stream_results``), so the database driver never holds the
whole result set at once. PostgreSQL URLs must name the driver:
``postgresql+psycopg2://`` (with SQLAlchemy 2.1 a bare ``postgresql://`` picks psycopg3).

The URL may carry a password: name the environment variable that holds it in
``url_env`` (read when the engine is made); messages and repr only ever show the URL
with the password hidden.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy import exc as sa_exc

from churn_assets.sources.base import (CustomerSource, NewRecords, SourceBatch, SourceError,
                                  TransientSourceError, next_watermark, parse_updated_at)
from churn_assets.core.spec import FeatureSpec


class SqlSource(CustomerSource):
    """A table or query; ``updated_at_column`` empty means the spec's ``updated_at_column``.

    ``as_of`` fixes the data's "today" (YYYY-MM-DD, for replaying old extracts); empty
    means now, which is right for a live database.
    """

    url: str = Field("", repr=False)
    url_env: str = ""
    table: str = ""
    query: str = ""
    updated_at_column: str = ""
    chunk_size: int = 50_000
    as_of: str = ""

    def resolved_url(self) -> str:
        if self.url_env and not self.url:
            value = os.environ.get(self.url_env, "")
            if not value:
                raise SourceError(f"sql source: the environment variable {self.url_env} (source.url_env)"
                                  " is not set; it must hold the database URL")
            return value
        return self.url

    def safe_url(self) -> str:
        try:
            url = self.resolved_url()
        except SourceError:
            return f"<URL from ${self.url_env}, unset>"
        try:
            return sa.engine.make_url(url).render_as_string(hide_password=True)
        except sa_exc.ArgumentError:
            return "<unparseable URL>"

    def describe(self) -> str:
        return f"sql ({self.safe_url()}, {self.table or 'query'})"

    def __repr_args__(self):
        return [*super().__repr_args__(), ("url", self.safe_url())]

    def _engine(self) -> sa.Engine:
        try:
            url = sa.engine.make_url(self.resolved_url())
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                    and not Path(url.database).is_file():
                # SQLite would silently create an empty file and then find no table.
                raise SourceError(f"sql source: no SQLite database at {url.database}")
            return sa.create_engine(url, pool_pre_ping=True)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
            raise SourceError(f"sql source: cannot use URL {self.safe_url()}: {exc}; PostgreSQL"
                              " needs postgresql+psycopg2://user@host/db") from None

    def _column_name(self, spec: FeatureSpec) -> str:
        return self.updated_at_column or spec.updated_at_column or "updated_at"

    def _source(self, engine: sa.Engine, column: str):
        """What to select from, and the watermark column in it."""
        if self.query:
            # The company's own SQL, wrapped as a subquery that we filter and order.
            return sa.text(f"({self.query.strip().rstrip(';')}) AS churn_source"), \
                sa.column(column, sa.DateTime)
        schema, _, name = self.table.rpartition(".")
        try:
            table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=engine)
        except sa_exc.NoSuchTableError:
            raise SourceError(f"sql source: no table {self.table!r} in {self.safe_url()}") from None
        if column not in table.c:
            raise SourceError(f"sql source: table {self.table!r} has no column {column!r} for the"
                              f" watermark; it has {list(table.c.keys())[:20]}; set"
                              " source.updated_at_column")
        return table, table.c[column]

    def _select(self, engine: sa.Engine, column: str, watermark: str | None, count: bool = False):
        source, stamp = self._source(engine, column)
        if count:
            stmt = sa.select(sa.func.count(), sa.func.max(stamp))
        else:
            stmt = sa.select(sa.text("*") if self.query else source).order_by(stamp)
        stmt = stmt.select_from(source)
        if watermark:
            # Bound with the column's own type, so SQLite compares its stored text format
            # and PostgreSQL compares timestamps; never string-formatted into the SQL.
            bound = sa.bindparam("watermark", pd.Timestamp(watermark).to_pydatetime(), type_=stamp.type)
            stmt = stmt.where(stamp > bound)
        return stmt

    def _errors(self, action: str):
        return _SqlErrors(self, action)

    def iter_chunks(self, spec: FeatureSpec, watermark: str | None) -> Iterator[pd.DataFrame]:
        """Rows past ``watermark`` in ``chunk_size`` frames, oldest ``updated_at`` first."""
        column = self._column_name(spec)
        engine = self._engine()
        try:
            with self._errors("read"), engine.connect() as conn:
                stmt = self._select(engine, column, watermark)
                conn = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_size)
                for number, chunk in enumerate(pd.read_sql(stmt, conn, chunksize=self.chunk_size)):
                    yield parse_updated_at(chunk, column, f"sql source chunk {number + 1}")
        finally:
            engine.dispose()

    def fetch(self, spec: FeatureSpec, watermark: str | None,
              as_of: pd.Timestamp | None = None) -> SourceBatch:
        column = self._column_name(spec)
        chunks = [chunk for chunk in self.iter_chunks(spec, watermark) if len(chunk)]
        records = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
        new_mark = next_watermark(records, column, watermark)
        if as_of is None:
            as_of = pd.Timestamp(self.as_of) if self.as_of else pd.Timestamp.now(tz="UTC").tz_localize(None)
        return SourceBatch(records, new_mark, as_of,
                           f"{self.describe()}: {len(records)} records in {len(chunks)} chunks")

    def sample(self, spec: FeatureSpec, rows: int = 5) -> pd.DataFrame:
        """The first ``rows`` rows of the table or query (a LIMIT query)."""
        engine = self._engine()
        try:
            with self._errors("sample"), engine.connect() as conn:
                source, _ = self._source(engine, self._column_name(spec))
                stmt = sa.select(sa.text("*") if self.query else source).select_from(source).limit(rows)
                return pd.read_sql(stmt, conn)
        finally:
            engine.dispose()

    def count_new(self, spec: FeatureSpec, watermark: str | None) -> NewRecords:
        column = self._column_name(spec)
        engine = self._engine()
        try:
            with self._errors("count"), engine.connect() as conn:
                count, newest = conn.execute(self._select(engine, column, watermark, count=True)).one()
        finally:
            engine.dispose()
        return NewRecords(int(count), pd.Timestamp(newest).isoformat() if newest is not None else None)


class _SqlErrors:
    """Database errors as SourceErrors: lost connections may heal, bad SQL will not."""

    def __init__(self, source: SqlSource, action: str) -> None:
        self.source, self.action = source, action

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ is not None:
            exc = exc.__cause__  # pandas wraps the driver's error; judge the original
        where = f"sql source: {self.action} from {self.source.safe_url()} failed"
        if isinstance(exc, sa_exc.DBAPIError):
            detail = str(exc.orig).strip()
            if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError) or (
                    isinstance(exc, sa_exc.OperationalError) and any(w in detail.lower() for w in TRANSIENT_WORDS)):
                raise TransientSourceError(f"{where} (database unreachable or busy): {detail}") from None
            raise SourceError(f"{where}: {detail}; check source.table / source.query") from None
        return False


# OperationalError covers both "server went away" and (in SQLite) "no such table";
# only the first kind is worth a retry.
TRANSIENT_WORDS = ("connect", "locked", "timeout", "timed out", "terminat", "closed", "server")
