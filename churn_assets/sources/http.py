"""Customer records from a company's REST API (contract: docs/ingestion.md).

``GET {base_url}/v1/customers?updated_since=...&limit=...`` returns one page of records
changed after the watermark and an opaque ``next_cursor``; the source follows cursors
until there is none. One ``requests.Session`` carries the bearer token and urllib3's
retry policy: exponential backoff with jitter on connection errors, 429 (waiting at
least ``Retry-After``) and 5xx. 400/401/403/404 are the caller's mistake, so they fail
at once with a message that says what to fix. Errors left after the session's own
retries are ``TransientSourceError`` (the asset's RetryPolicy tries again later);
contract violations are ``SourceError`` (no point in retrying).

The token is read from the environment variable ``token_env`` names when a session
opens (so a rotated token is picked up by the next run) and never put in a message, log
or repr. Credentials in ``base_url`` itself (``https://user:password@host``) are refused
when the source is built, and every description and error message is passed through
``core.redaction.redact`` as well (``token=`` / ``password=`` query values), so a
secret in the URL cannot reach the history's state.json, run metadata or an alert.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pandas as pd
import requests
from pydantic import ConfigDict, Field, model_validator
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from churn_assets.sources.base import (CustomerSource, NewRecords, SourceBatch, SourceError,
                                  TransientSourceError, next_watermark, parse_updated_at)
from churn_assets.core.spec import FeatureSpec
from churn_assets.core.redaction import has_credentials, redact

RETRY_STATUSES = (429, 500, 502, 503, 504)
API_PREFIX = "/v1/customers"


class HttpSource(CustomerSource):
    """A REST API that pages through customer snapshots changed since a watermark.

    ``token`` overrides the environment variable ``token_env`` (tests); leave it empty in
    configuration, so the secret never sits in a config file or the run's config.
    """

    # A refused value must not come back in pydantic's own error text ("input_value=...").
    model_config = ConfigDict(**CustomerSource.model_config, hide_input_in_errors=True)

    base_url: str
    token: str = Field(default="", repr=False)
    token_env: str = "CHURN_ASSETS_API_TOKEN"
    page_size: int = 5000
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_retries: int = 5
    # A stalled API rarely recovers within seconds; one retry keeps the worst case near
    # 2 x read_timeout instead of (max_retries + 1) x read_timeout.
    read_retries: int = 1
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    # A Retry-After longer than this is cut to it: a whole day's wait belongs to the
    # next scheduled run, not to a worker blocked in sleep.
    max_retry_after: int = 300

    @model_validator(mode="after")
    def _no_credentials_in_url(self) -> HttpSource:
        # The URL is shown in run metadata, state.json and alerts; a password in it would
        # be stored in plain text there, and a 401 would then name the wrong fix.
        if has_credentials(self.base_url):
            raise ValueError(
                f"source.base_url must not carry credentials (user:password@ or token@):"
                f" {redact(self.base_url)}; put the API token in the environment variable"
                f" {self.token_env} (source.token_env) instead; it is sent as a bearer token")
        return self

    def describe(self) -> str:
        return f"http ({redact(self.base_url)})"

    def __repr_args__(self):
        # repr() ends up in tracebacks and Dagster's resource logs: the URL as described.
        for name, value in super().__repr_args__():
            yield name, redact(value) if name == "base_url" else value

    # --- transport -----------------------------------------------------------------

    def session(self) -> requests.Session:
        retry = Retry(
            total=self.max_retries, connect=self.max_retries, read=self.read_retries,
            status=self.max_retries, other=0, allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES, backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max, backoff_jitter=self.backoff_factor,
            respect_retry_after_header=True, retry_after_max=self.max_retry_after,
            # The last response is kept so its status can name the problem.
            raise_on_status=False,
        )
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["Accept"] = "application/json"
        token = self.bearer_token()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        return session

    def bearer_token(self) -> str:
        return self.token or os.environ.get(self.token_env, "")

    def _scrub(self, text: str) -> str:
        # Defence in depth: a server that echoes the header must not leak it through us,
        # and a secret query value in the URL must not reach a message either.
        token = self.bearer_token()
        return redact(text.replace(token, "***") if token else text)

    def get_json(self, session: requests.Session, path: str, params: dict) -> dict:
        """One GET, as JSON; every error message it raises is scrubbed of secrets."""
        try:
            return self._get_json(session, path, params)
        except SourceError as exc:
            raise type(exc)(self._scrub(str(exc))) from None

    def _get_json(self, session: requests.Session, path: str, params: dict) -> dict:
        url = self.base_url.rstrip("/") + path
        try:
            response = session.get(url, params=params,
                                   timeout=(self.connect_timeout, self.read_timeout))
            body = response.content  # read here so a body cut short is caught below
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientSourceError(self._scrub(
                f"customer API: could not connect to {url} within {self.connect_timeout}s"
                f" ({self.max_retries} retries); is the API up? ({exc})")) from None
        except requests.exceptions.ReadTimeout:
            raise TransientSourceError(self._stalled(url)) from None
        except requests.exceptions.ChunkedEncodingError as exc:
            raise TransientSourceError(self._scrub(
                f"customer API: the response from {url} was cut short ({exc})")) from None
        except requests.exceptions.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", exc.args[0]) if exc.args else None
            if isinstance(reason, ReadTimeoutError):
                raise TransientSourceError(self._stalled(url)) from None  # stalled mid-body
            raise TransientSourceError(self._scrub(
                f"customer API: connection to {url} failed after {self.max_retries} retries"
                f" ({exc})")) from None
        except requests.exceptions.RequestException as exc:
            raise SourceError(self._scrub(f"customer API: request to {url} failed: {exc}")) from None
        self._raise_for_status(response, url, body)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            excerpt = body[:200].decode("utf-8", "replace")
            raise SourceError(self._scrub(
                f"customer API: {url} returned malformed JSON ({exc}); body starts {excerpt!r}."
                " The API must answer with the JSON documented in docs/ingestion.md")) from None

    def _stalled(self, url: str) -> str:
        return (f"customer API: {url} sent no data for {self.read_timeout}s (read timeout,"
                f" {self.read_retries} retries); the API is stalled, or raise source.read_timeout")

    def _raise_for_status(self, response: requests.Response, url: str, body: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = self._scrub(body[:200].decode("utf-8", "replace"))
        if status in (401, 403):
            raise SourceError(
                f"customer API: {url} refused the credentials (HTTP {status}); set the"
                f" environment variable {self.token_env} to a valid API token")
        if status == 404:
            raise SourceError(
                f"customer API: {url} not found (HTTP 404); check source.base_url, or the"
                f" page cursor expired (re-run to start again from the watermark): {detail}")
        if status == 400:
            raise SourceError(f"customer API: {url} rejected the request (HTTP 400): {detail};"
                              " check source.page_size and the watermark format")
        if status in RETRY_STATUSES:
            raise TransientSourceError(
                f"customer API: {url} still answered HTTP {status} after {self.max_retries}"
                f" retries with backoff: {detail}")
        raise SourceError(f"customer API: {url} answered HTTP {status}: {detail}")

    # --- pages ---------------------------------------------------------------------

    def iter_pages(self, spec: FeatureSpec, watermark: str | None,
                   session: requests.Session | None = None) -> Iterator[tuple[pd.DataFrame, dict]]:
        """One DataFrame per page (and the page's envelope), so callers can stream."""
        column = spec.updated_at_column or "updated_at"
        own = session is None
        session = session or self.session()
        try:
            params: dict = {"limit": self.page_size}
            if watermark:
                params["updated_since"] = pd.Timestamp(watermark).isoformat()
            page_number = 0
            while True:
                page_number += 1
                envelope = self.get_json(session, API_PREFIX, params)
                records = envelope.get("records") if isinstance(envelope, dict) else None
                cursor = envelope.get("next_cursor") if isinstance(envelope, dict) else None
                if not isinstance(records, list) or not (cursor is None or isinstance(cursor, str)):
                    raise SourceError(
                        f"customer API: page {page_number} breaks the contract: expected an object"
                        " with a list 'records' and a string or null 'next_cursor'")
                frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
                if len(frame):
                    frame = parse_updated_at(frame, column, f"customer API page {page_number}")
                yield frame, envelope
                if cursor is None:
                    return
                params = {"cursor": cursor, "limit": self.page_size}
        finally:
            if own:
                session.close()

    def fetch(self, spec: FeatureSpec, watermark: str | None,
              as_of: pd.Timestamp | None = None) -> SourceBatch:
        run_as_of = as_of
        frames, total, as_of, pages = [], None, None, 0
        for frame, envelope in self.iter_pages(spec, watermark):
            pages += 1
            if pages == 1:
                total, as_of = envelope.get("total"), envelope.get("as_of")
            if len(frame):
                frames.append(frame)
        records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if isinstance(total, int) and total != len(records):
            # A page went missing or came back short: storing a partial batch would move
            # the watermark past records we never saw.
            raise TransientSourceError(
                f"customer API: received {len(records)} records in {pages} pages but the"
                f" first page announced {total}; a page was lost or truncated")
        new_mark = next_watermark(records, spec.updated_at_column or "updated_at", watermark)
        stamp = pd.Timestamp(run_as_of if run_as_of is not None else as_of or
                             pd.Timestamp.now(tz="UTC").tz_localize(None))
        return SourceBatch(records, new_mark, stamp,
                           f"http: {redact(self.base_url)}, {len(records)} records in {pages} pages")

    def sample(self, spec: FeatureSpec, rows: int = 5) -> pd.DataFrame:
        """The first page of ``rows`` records, asked once: no retries, so a check of the
        configuration against an API that is down answers in seconds, not minutes."""
        once = self.model_copy(update={"max_retries": 0, "read_retries": 0, "page_size": rows})
        with once.session() as session:
            frame, _ = next(once.iter_pages(spec, None, session))
        return frame

    def count_new(self, spec: FeatureSpec, watermark: str | None) -> NewRecords:
        params = {"updated_since": pd.Timestamp(watermark).isoformat()} if watermark else {}
        with self.session() as session:
            answer = self.get_json(session, f"{API_PREFIX}/count", params)
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int):
            raise SourceError("customer API: /count breaks the contract: expected {'count': int,"
                              " 'max_updated_at': str|null}")
        return NewRecords(count, answer.get("max_updated_at"))
