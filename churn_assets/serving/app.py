"""The prediction API: an ASGI app (FastAPI) over a ModelStore.

Endpoints: ``POST /predict``, ``GET /health``, ``GET /ready``, ``GET /model`` and the
OpenAPI document (``/openapi.json``, ``/docs``), whose /predict request schema is
generated from the feature spec of the model being served and follows it on reload.
``/docs`` works offline: the Swagger UI files are served from the installed
``fastapi-offline`` package under ``/static/swagger-ui/``, not from a CDN. It ships
Swagger UI 5, the first major version that reads OpenAPI 3.1, which FastAPI emits
(the 4.x of ``swagger-ui-bundle`` said "Unable to render this definition").

/predict is served by ``predict_endpoint.PredictFrontDoor`` in front of FastAPI, with
the record checks of ``schema.py`` instead of a pydantic body model: both are far
cheaper than the framework's path, and the checks name every bad row and field
(422/413) in one response. FastAPI serves the rest and documents /predict.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

import orjson
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from churn_assets.serving.model_store import ModelStore
from churn_assets.serving.predict_endpoint import PredictFrontDoor
from churn_assets.serving.schema import BATCH_KEY

TOKEN_ENV = "CHURN_ASSETS_API_TOKEN"
SWAGGER_UI = "/static/swagger-ui"
SWAGGER_UI_FILES = files("fastapi_offline") / "static"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
ENV_PREFIX = "CHURN_ASSETS_SERVE_"


def _env_number(env, name: str, kind: type, default, minimum):
    """A number from CHURN_ASSETS_SERVE_<name>; a bad value names the variable."""
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        from churn_assets.settings import SettingsError  # a ValueError that the CLI prints as one line
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: must be {'an integer' if kind is int else 'a number'}"
                         f" >= {minimum}")
    return value


@dataclass(frozen=True)
class ServeConfig:
    """How one server process behaves; ``from_env`` is what each uvicorn worker reads."""

    registry_root: str
    max_batch: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    poll_seconds: float = 0.5
    api_token: str | None = None  # None or empty: only /health and /ready are open anyway
    body_timeout: float = 30.0  # seconds from the headers to the last body byte (else 408)
    max_inflight_body_bytes: int = 256 * 1024 * 1024  # bodies being received at once, per worker

    @classmethod
    def from_env(cls, environ: dict | None = None) -> ServeConfig:
        env = os.environ if environ is None else environ
        root = env.get("CHURN_ASSETS_SERVE_REGISTRY")
        if not root:
            from churn_assets.settings import load_settings
            root = str(load_settings(env).home / "registry")
        return cls(registry_root=root,
                   max_batch=_env_number(env, "MAX_BATCH", int, cls.max_batch, 1),
                   max_body_bytes=_env_number(env, "MAX_BODY_BYTES", int, cls.max_body_bytes, 1),
                   poll_seconds=_env_number(env, "POLL_SECONDS", float, cls.poll_seconds, 0.01),
                   api_token=env.get(TOKEN_ENV) or None,
                   body_timeout=_env_number(env, "BODY_TIMEOUT", float, cls.body_timeout, 0.1),
                   max_inflight_body_bytes=_env_number(env, "MAX_INFLIGHT_BODY_BYTES", int,
                                                       cls.max_inflight_body_bytes, 1))


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


def not_ready(store: ModelStore) -> Response:
    return json_response({"ready": False, "reason": store.problem or "no production model loaded"}, 503)


def create_app(config: ServeConfig, store: ModelStore | None = None) -> PredictFrontDoor:
    """The ASGI app: /predict in front (``predict_endpoint``), FastAPI for the rest."""
    store = store or ModelStore(config.registry_root, config.max_batch, config.poll_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.start()
        try:
            yield
        finally:
            store.stop()

    app = FastAPI(title="churn-assets prediction API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Churn probability of customers from the production model in the registry.")
    app.state.store = store
    # The docs page must render on a machine without internet: Swagger UI's files come
    # from the fastapi-offline package, served by this server.
    app.mount(SWAGGER_UI, StaticFiles(directory=str(SWAGGER_UI_FILES)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER_UI}/favicon.png")

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
            "max_batch": config.max_batch,
            "artifact_on_disk": {"matches_registry": store.disk_problem is None, "problem": store.disk_problem}})

    app.openapi = lambda: openapi_document(app, store, config)
    return PredictFrontDoor(app, store, config.max_body_bytes, config.api_token, config.body_timeout,
                            config.max_inflight_body_bytes)


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
    operation = {"summary": "Churn probability of one customer or a batch", "operationId": "predict",
                 "parameters": [{"name": "explain", "in": "query", "required": False,
                                 "schema": {"type": "boolean", "default": False},
                                 "description": "add per customer `reasons`: up to three"
                                                " {feature, value, effect} pushing hardest toward churn,"
                                                " strongest first (effect in log-odds, `effect_scale`), and"
                                                " `base_log_odds`, the training window's average customer:"
                                                " base_log_odds + the effects of every feature = the"
                                                " customer's log-odds"}],
                 "responses": {"200": {"description": "per customer: churn_probability, churn_label"
                                                      " (at the model's threshold), model_version; with"
                                                      " explain=true also reasons and base_log_odds"}}}
    document.setdefault("paths", {})["/predict"] = {"post": operation}
    operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/CustomerRecord"},
                  {"$ref": "#/components/schemas/CustomerBatch"}]}}}}
    operation["security"] = [{"bearer": []}] if config.api_token else []
    if config.api_token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for status, text in (("401", "missing or wrong bearer token"),
                         ("408", "the body did not arrive within the body timeout"),
                         ("413", f"body over {config.max_body_bytes} bytes, or far more JSON values"
                                 " than a full batch holds (counted before parsing)"),
                         ("415", "Content-Type is not application/json"),
                         ("422", "each bad row and field (or duplicate key): {row, field, message}; also"
                                 f" an empty batch or one over {config.max_batch} records"),
                         ("501", "explain=true for a model served without explanations"),
                         ("503", "no production model loaded, or the worker is receiving too many bodies")):
        operation["responses"][status] = {"description": text}
    app.state.openapi_cache = (version, document)
    return document


def app_from_env() -> PredictFrontDoor:
    """Factory for ``uvicorn --factory`` (each worker process builds its own app and store)."""
    return create_app(ServeConfig.from_env())
