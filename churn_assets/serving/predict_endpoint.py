"""POST /predict as a plain ASGI handler in front of the FastAPI app.

The endpoint is the hot path: a single-record prediction costs tens of microseconds,
so FastAPI's routing, dependency resolution and middleware stack would be most of the
request. Here the path is matched first and everything else is passed on to the
FastAPI app (health, readiness, model card, OpenAPI, docs), which also documents this
endpoint (see ``app.openapi_document``).
"""

from __future__ import annotations

import hmac
import logging

import numpy as np
import orjson
from starlette.concurrency import run_in_threadpool

from churn_assets.serving.model_store import ModelStore, ServingModel
from churn_assets.serving.schema import PredictRequest, RequestRejected, problem

log = logging.getLogger("churn_assets.serving")
THREAD_BATCH_ROWS = 256  # batches above this are scored off the event loop
JSON = (b"content-type", b"application/json")
UNAUTHORIZED = orjson.dumps({"detail": [problem(None, "Authorization", "a valid bearer token is required")]})


class BodyTooLarge(RequestRejected):
    def __init__(self, message: str):
        super().__init__(413, [problem(None, None, message)])


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


def score(model: ServingModel, request: PredictRequest) -> dict:
    """Probabilities and labels for a checked request, all from ``model``."""
    version, threshold = model.version, model.threshold
    if not request.batch:
        p = model.predict_one(*request.records.row(0))
        return {"model_version": version, "customer_id": request.customer_ids[0],
                "churn_probability": p, "churn_label": int(p >= threshold), "threshold": threshold}
    proba = model.predict_many(request.records)
    labels = (proba >= threshold).astype(np.int64).tolist()
    predictions = [{"customer_id": cid, "churn_probability": p, "churn_label": label,
                    "model_version": version}
                   for cid, p, label in zip(request.customer_ids, proba.tolist(), labels)]
    return {"model_version": version, "threshold": threshold, "predictions": predictions}


def token_ok(headers: dict[bytes, bytes], token: bytes | None) -> bool:
    """Constant-time bearer check; the token is never logged or echoed."""
    if token is None:
        return True
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


async def read_body(receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The body, refusing anything over ``limit`` bytes before reading all of it."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {int(declared)} bytes; at most {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked, or a Content-Length that lied
            raise BodyTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class PredictFrontDoor:
    """ASGI app: POST /predict handled here, every other request passed to ``app``."""

    def __init__(self, app, store: ModelStore, max_body_bytes: int, api_token: str | None):
        self.app = app
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.token = api_token.encode() if api_token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            detail = [problem(None, None, f"{scope['method']} /predict: use POST")]
            await respond(send, 405, orjson.dumps({"detail": detail}), [(b"allow", b"POST")])
            return
        headers = dict(scope["headers"])
        if not token_ok(headers, self.token):
            await respond(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
            return
        model = self.store.current  # read once: this request is computed by this version only
        try:
            body = await read_body(receive, headers, self.max_body_bytes)
            if model is None:
                reason = self.store.problem or "no production model loaded"
                await respond(send, 503, orjson.dumps({"ready": False, "reason": reason}))
                return
            checked = model.schema.parse(body)
        except RequestRejected as exc:
            await respond(send, exc.status, orjson.dumps(exc.body()))
            return
        except ClientGone:
            return
        if len(checked.customer_ids) > THREAD_BATCH_ROWS:
            result = await run_in_threadpool(score, model, checked)
        else:
            result = score(model, checked)
        await respond(send, 200, orjson.dumps(result), [(b"x-model-version", model.version.encode())])


async def respond(send, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
