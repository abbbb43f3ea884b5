"""POST /predict as a plain ASGI handler in front of the FastAPI app.

The endpoint is the hot path: a single-record prediction costs tens of microseconds,
so FastAPI's routing, dependency resolution and middleware stack would be most of the
request. Here the path is matched first and everything else is passed on to the
FastAPI app (health, readiness, model card, OpenAPI, docs), which also documents this
endpoint (see ``app.openapi_document``).

The front door also holds the per-request limits that uvicorn does not have: a
deadline for the body (a client trickling one byte every few seconds gets a 408 and
the connection is closed), a byte cap checked before and while reading, a cap on the
body bytes all requests of this worker hold at once, and the bearer token for every
path except the probes and the static Swagger UI files.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from itertools import repeat

import msgspec
import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from churn_assets.serving.explain import top_reasons
from churn_assets.serving.model_store import ModelStore, ServingModel
from churn_assets.serving.schema import PredictRequest, RequestRejected, problem

log = logging.getLogger("churn_assets.serving")
THREAD_BATCH_ROWS = 256  # batches above this are scored off the event loop
# Bodies above this are parsed off the event loop too: parsing 16 MiB takes tens of ms,
# which would stall every other connection of the worker.
THREAD_BODY_BYTES = 64 * 1024
JSON = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")
UNAUTHORIZED = orjson.dumps({"detail": [problem(None, "Authorization", "a valid bearer token is required")]})
# Probes must work without the secret; the Swagger UI files are public library code.
OPEN_PATHS = frozenset({"/health", "/ready"})
OPEN_PREFIX = "/static/swagger-ui/"


class BodyTooLarge(RequestRejected):
    def __init__(self, message: str):
        super().__init__(413, [problem(None, None, message)])


class BodyTimeout(RequestRejected):
    def __init__(self, seconds: float, received: int):
        super().__init__(408, [problem(None, None, f"the body was not complete within {seconds:g} s"
                                       f" ({received} bytes received); send it at once")])


class ServerBusy(RequestRejected):
    def __init__(self, message: str):
        super().__init__(503, [problem(None, None, message)])


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


class Prediction(msgspec.Struct, gc=False):
    """One customer's answer in a batch, its fields in the order of the answer's keys."""

    customer_id: object
    churn_probability: float
    churn_label: int
    model_version: str


def score(model: ServingModel, request: PredictRequest, explain: bool = False) -> dict:
    """Probabilities and labels for a checked request, all from ``model``; with
    ``explain``, each customer's ``reasons`` and ``base_log_odds`` too (``explain.py``).

    A batch's ``predictions`` are already JSON, an ``orjson.Fragment`` that
    ``orjson.dumps`` splices in as is: one struct per customer, built by ``map`` and
    encoded by msgspec, takes about half the time of 10,000 dicts encoded by orjson,
    and the bytes are the same (both write the shortest round-trip float, and the
    exponent notations they differ on, ``e+NN``, never occur in [0, 1]; see the tests)."""
    version, threshold = model.version, model.threshold
    if explain:
        return explained(model, request)
    if not request.batch:
        p = model.predict_one(*request.records.row(0))
        return {"model_version": version, "customer_id": request.customer_ids[0],
                "churn_probability": p, "churn_label": int(p >= threshold), "threshold": threshold}
    proba = model.predict_many(request.records)
    labels = (proba >= threshold).astype(np.int64).tolist()
    predictions = list(map(Prediction, request.customer_ids, proba.tolist(), labels, repeat(version)))
    return {"model_version": version, "threshold": threshold,
            "predictions": orjson.Fragment(msgspec.json.encode(predictions))}


def explained(model: ServingModel, request: PredictRequest) -> dict:
    """``score`` with reasons: per customer the features pushing hardest toward churn,
    ``{"feature", "value", "effect"}`` strongest first, and the base they add to."""
    explainer = model.explainer
    if explainer is None:
        raise RequestRejected(501, [problem(None, "explain", f"model {model.version} has no explanations"
                                            " (it is served through the pandas pipeline)")])
    version, threshold, base = model.version, model.threshold, explainer.base
    records = request.records
    if request.batch:
        done = explainer.explain_many(records)
        proba, contributions = done.probability, done.contributions
    else:
        p, row = explainer.explain_one(*records.row(0))
        proba, contributions = np.array([p]), row[None, :]
    order, effects = top_reasons(contributions, explainer.features)
    # Whole arrays to Python lists once: the loop below then only indexes lists.
    names = explainer.features
    n_numeric = len(explainer.compiled.numeric_features)
    numeric = np.where(np.isnan(records.numeric), None, records.numeric).tolist()
    texts = [list(column) for column in records.categories]
    predictions = []
    for i, (cid, p, picked, pushed) in enumerate(zip(request.customer_ids, proba.tolist(), order.tolist(),
                                                      effects.tolist())):
        reasons = [{"feature": names[j], "effect": effect,
                    "value": numeric[i][j] if j < n_numeric else texts[j - n_numeric][i]}
                   for j, effect in zip(picked, pushed) if j >= 0]
        predictions.append({"customer_id": cid, "churn_probability": p, "churn_label": int(p >= threshold),
                            "model_version": version, "reasons": reasons, "base_log_odds": base})
    scale = {"effect_scale": explainer.scale, "baseline": explainer.reference_note}
    if not request.batch:
        one = predictions[0]
        return {"model_version": version, "customer_id": one["customer_id"],
                "churn_probability": one["churn_probability"], "churn_label": one["churn_label"],
                "threshold": threshold, "reasons": one["reasons"], "base_log_odds": base, **scale}
    return {"model_version": version, "threshold": threshold, "base_log_odds": base, **scale,
            "predictions": predictions}


def parse_and_score(model: ServingModel, body: bytes, explain: bool = False) -> dict:
    return score(model, model.schema.parse(body), explain)


def explain_requested(query: bytes) -> bool:
    """``explain=true`` (or 1, yes) in the query string; any other value of it is a 422."""
    if not query:
        return False
    wanted = False
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key != b"explain":
            continue
        value = value.lower()
        if value in (b"true", b"1", b"yes"):
            wanted = True
        elif value in (b"false", b"0", b"no", b""):
            wanted = False
        else:
            raise RequestRejected(422, [problem(None, "explain", f"must be true or false, not"
                                                f" {value.decode('latin-1')!r}")])
    return wanted


def token_ok(headers: dict[bytes, bytes], token: bytes | None) -> bool:
    """Constant-time bearer check; the token is never logged or echoed."""
    if token is None:
        return True
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def json_content_type(value: bytes | None) -> bool:
    """application/json or any ``+json`` type, parameters (charset) ignored. No header at
    all is read as JSON: many scripted clients leave it out, and the body is checked anyway."""
    if value is None or value == b"application/json":  # the usual case, one compare
        return True
    media = value.partition(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class BodyDeadlines:
    """Which requests of this worker are reading a body, and by when they must be done.

    One sweep per ``tick`` cancels the reads that are late, instead of a timer per
    request: registering a read is a dict insert (~0.1 us) where ``asyncio.timeout``
    costs ~4 us, a third of a single-record prediction. The sweep runs only while some
    body is being read. Deadlines are therefore honoured within one tick.
    """

    def __init__(self, seconds: float, tick: float = 0.25):
        self.seconds = seconds
        self.tick = min(tick, seconds / 4)
        self.reading: dict[asyncio.Task, float] = {}
        self.expired: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop a sweep is scheduled on

    def begin(self, task: asyncio.Task, loop: asyncio.AbstractEventLoop) -> None:
        self.reading[task] = loop.time() + self.seconds
        if self._loop is not loop:
            self._loop = loop
            loop.call_later(self.tick, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in list(self.reading.items()):
            if deadline <= now and task not in self.expired:
                self.expired.add(task)
                task.cancel()  # lands in read_body's ``await receive()``, turned into a 408 there
        if self.reading:
            loop.call_later(self.tick, self._sweep, loop)
        else:
            self._loop = None


class PredictFrontDoor:
    """ASGI app: POST /predict handled here, every other request passed to ``app``."""

    def __init__(self, app, store: ModelStore, max_body_bytes: int, api_token: str | None,
                 body_timeout: float = 30.0, max_inflight_body_bytes: int = 256 * 1024 * 1024):
        self.app = app
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.token = api_token.encode() if api_token else None
        self.deadlines = BodyDeadlines(body_timeout)
        self.max_inflight = max_inflight_body_bytes
        self.inflight = 0  # bytes of large bodies received by requests still reading

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path != "/predict":
            if (self.token is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX)
                    and not token_ok(dict(scope["headers"]), self.token)):
                await respond(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            detail = [problem(None, None, f"{scope['method']} /predict: use POST")]
            await respond(send, 405, orjson.dumps({"detail": detail}), [(b"allow", b"POST")])
            return
        headers = dict(scope["headers"])
        # Answered without reading the body: close the connection, or the client's body
        # would keep it busy (and its bytes would be read as the next request's start).
        if not token_ok(headers, self.token):
            await respond(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer"), CLOSE])
            return
        content_type = headers.get(b"content-type")
        if not json_content_type(content_type):
            given = content_type.decode("latin-1")
            detail = [problem(None, "Content-Type", f"{given!r} is not JSON; send application/json")]
            await respond(send, 415, orjson.dumps({"detail": detail}), [CLOSE])
            return
        model = self.store.current  # read once: this request is computed by this version only
        try:
            body = await self.read_body(receive, headers)
            if model is None:
                reason = self.store.problem or "no production model loaded"
                await respond(send, 503, orjson.dumps({"ready": False, "reason": reason}))
                return
            explain = explain_requested(scope.get("query_string", b""))
            if len(body) > THREAD_BODY_BYTES:
                result = await run_in_threadpool(parse_and_score, model, body, explain)
            else:
                checked = model.schema.parse(body)
                if len(checked.customer_ids) > THREAD_BATCH_ROWS:
                    result = await run_in_threadpool(score, model, checked, explain)
                else:
                    result = score(model, checked, explain)
        except RequestRejected as exc:
            # A body refused before it was all read would be read as the next request.
            extra = [CLOSE] if isinstance(exc, (BodyTooLarge, BodyTimeout, ServerBusy)) else []
            if isinstance(exc, ServerBusy):
                extra.append((b"retry-after", b"1"))
            await respond(send, exc.status, orjson.dumps(exc.body()), extra)
            return
        except ClientGone:
            return
        await respond(send, 200, orjson.dumps(result), [(b"x-model-version", model.version.encode())])

    async def read_body(self, receive, headers: dict[bytes, bytes]) -> bytes:
        """The body, within the byte cap, the worker's in-flight budget and the deadline."""
        limit = self.max_body_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"body of {int(declared)} bytes; at most {limit}")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        self.deadlines.begin(task, loop)
        chunks, size = [], 0
        counted = 0  # bytes of this body in self.inflight
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:  # chunked, or a Content-Length that lied
                    raise BodyTooLarge(f"body over {limit} bytes")
                # Only bytes received count, and only those of large bodies: counting what
                # a Content-Length announces, or small bodies, would let a few clients that
                # announce much and send nothing refuse everyone else.
                if size > THREAD_BODY_BYTES:
                    self.inflight += size - counted
                    counted = size
                    if self.inflight > self.max_inflight:
                        raise ServerBusy(f"this worker is receiving more than {self.max_inflight} bytes"
                                         " of request bodies; retry shortly")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self.deadlines.expired:
                raise  # a real cancellation (shutdown), not our deadline
            task.uncancel()
            raise BodyTimeout(self.deadlines.seconds, size) from None
        finally:
            self.inflight -= counted
            del self.deadlines.reading[task]
            self.deadlines.expired.discard(task)


async def respond(send, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
