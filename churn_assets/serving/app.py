"""The prediction API: an ASGI app (FastAPI) over a ModelStore.

Endpoints: ``POST /predict``, ``GET /health``, ``GET /ready``, ``GET /model`` and the
OpenAPI document (``/openapi.json``, ``/docs``), whose /predict request schema is
generated from the feature spec of the model being served and follows it on reload.

/predict reads the raw body and answers with orjson instead of declaring a pydantic
body model: the record checks in ``schema.py`` are cheaper, and they name every bad
row and field (422/413) in one response. Large batches are scored in a worker thread
so that one 10,000-row request does not stall the single-row requests behind it.
"""

from __future__ import annotations

import hmac
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from churn_assets.serving.model_store import ModelStore, ServingModel
from churn_assets.serving.schema import BATCH_KEY, RequestRejected, problem

TOKEN_ENV = "CHURN_ASSETS_API_TOKEN"
THREAD_BATCH_ROWS = 256  # batches above this are scored off the event loop


@dataclass(frozen=True)
class ServeConfig:
    """How one server process behaves; ``from_env`` is what each uvicorn worker reads."""

    registry_root: str
    max_batch: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    poll_seconds: float = 0.5
    api_token: str | None = None  # None or empty: /predict is open

    @classmethod
    def from_env(cls, environ: dict | None = None) -> ServeConfig:
        env = os.environ if environ is None else environ
        root = env.get("CHURN_ASSETS_SERVE_REGISTRY")
        if not root:
            from churn_assets.settings import load_settings
            root = str(load_settings(env).home / "registry")
        return cls(registry_root=root,
                   max_batch=int(env.get("CHURN_ASSETS_SERVE_MAX_BATCH", cls.max_batch)),
                   max_body_bytes=int(env.get("CHURN_ASSETS_SERVE_MAX_BODY_BYTES", cls.max_body_bytes)),
                   poll_seconds=float(env.get("CHURN_ASSETS_SERVE_POLL_SECONDS", cls.poll_seconds)),
                   api_token=env.get(TOKEN_ENV) or None)


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def rejected(exc: RequestRejected) -> Response:
    return json_response(exc.body(), exc.status)


def not_ready(store: ModelStore) -> Response:
    return json_response({"ready": False, "reason": store.problem or "no production model loaded"}, 503)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, [problem(None, None, f"body of {declared} bytes; at most {limit}")])
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked or lying Content-Length
            raise RequestRejected(413, [problem(None, None, f"body over {limit} bytes")])
        chunks.append(chunk)
    return b"".join(chunks)


def check_token(request: Request, token: bytes | None) -> Response | None:
    """None if allowed; else a 401. The token is compared in constant time, never logged."""
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
        return None
    return json_response({"detail": [problem(None, "Authorization", "a valid bearer token is required")]},
                         401, headers={"WWW-Authenticate": "Bearer"})


def score(model: ServingModel, request) -> dict:
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


def create_app(config: ServeConfig, store: ModelStore | None = None) -> FastAPI:
    store = store or ModelStore(config.registry_root, config.max_batch, config.poll_seconds)
    token = config.api_token.encode() if config.api_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.start()
        try:
            yield
        finally:
            store.stop()

    app = FastAPI(title="churn-assets prediction API", lifespan=lifespan,
                  description="Churn probability of customers from the production model in the registry.")
    app.state.store = store

    @app.get("/health", summary="The process is alive")
    async def health():
        return json_response({"status": "alive"})

    @app.get("/ready", summary="A production model is loaded (503 before the first deploy)")
    async def ready():
        model = store.current
        if model is None:
            return not_ready(store)
        return json_response({"ready": True, "model_version": model.version,
                              "degraded": store.problem is not None, "problem": store.problem,
                              "fast_path": model.compiled is not None})

    @app.get("/model", summary="The production model: version, metrics, feature spec, data window")
    async def model_info():
        model = store.current
        if model is None:
            return not_ready(store)
        m = model.manifest
        return json_response({
            "version": model.version, "family": model.predictor.family, "threshold": model.threshold,
            "sha256": model.sha256, "trained_at": model.predictor.trained_at or m.get("trained_at"),
            "metrics": m.get("metrics", {}), "validation_metrics": model.predictor.validation_metrics,
            "data_window": model.predictor.data_window or m.get("data_window"),
            "feature_spec": model.predictor.spec.to_dict(), "code_version": model.predictor.code_version,
            "promoted_at": model.pointer.get("promoted_at"), "registered_at": m.get("registered_at"),
            "required_fields": sorted(model.schema.required), "fast_path": model.compiled is not None,
            "max_batch": config.max_batch})

    @app.post("/predict", summary="Churn probability of one customer or a batch")
    async def predict(request: Request):
        denied = check_token(request, token)
        if denied is not None:
            return denied
        model = store.current  # read once: this request is computed by this version only
        try:
            body = await read_body(request, config.max_body_bytes)
            if model is None:
                return not_ready(store)
            checked = model.schema.parse(body)
        except RequestRejected as exc:
            return rejected(exc)
        if len(checked.customer_ids) > THREAD_BATCH_ROWS:
            result = await run_in_threadpool(score, model, checked)
        else:
            result = score(model, checked)
        return json_response(result, headers={"X-Model-Version": model.version})

    app.openapi = lambda: openapi_document(app, store, config)
    return app


def openapi_document(app: FastAPI, store: ModelStore, config: ServeConfig) -> dict:
    """OpenAPI with the /predict body schema of the model served now (rebuilt per version)."""
    model = store.current
    version = model.version if model else None
    cached = getattr(app.state, "openapi_cache", None)
    if cached and cached[0] == version:
        return cached[1]
    document = get_openapi(title=app.title, version=version or "no model", routes=app.routes,
                           description=app.description)
    record = model.schema.json_schema() if model else {"type": "object"}
    batch = {"type": "object", "additionalProperties": False, "required": [BATCH_KEY],
             "properties": {BATCH_KEY: {"type": "array", "items": {"$ref": "#/components/schemas/CustomerRecord"},
                                        "minItems": 1, "maxItems": config.max_batch}}}
    document.setdefault("components", {}).setdefault("schemas", {}).update(
        {"CustomerRecord": record, "CustomerBatch": batch})
    operation = document["paths"]["/predict"]["post"]
    operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/CustomerRecord"},
                  {"$ref": "#/components/schemas/CustomerBatch"}]}}}}
    operation["security"] = [{"bearer": []}] if config.api_token else []
    if config.api_token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for status, text in (("401", "missing or wrong bearer token"), ("413", "body or batch over the limit"),
                         ("422", "each bad row and field: {row, field, message}"),
                         ("503", "no production model loaded")):
        operation.setdefault("responses", {})[status] = {"description": text}
    app.state.openapi_cache = (version, document)
    return document


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (each worker process builds its own app and store)."""
    return create_app(ServeConfig.from_env())
