"""The HTTP app: ``POST /predict`` (simple JSON API), the Open Inference Protocol (serving/v2.py),
``/healthz``, ``/metrics``, ``POST /admin/reload`` and a small upload page at ``/``.

Every non-2xx answer is JSON ``{"error": "..."}``: bad input is 4xx (400 undecodable, 413 too large,
415 wrong content type, 422 bad parameters), overload is 429 with ``Retry-After`` (refused before
the body is read, or before decoding once the image count is known, when the latency budget cannot be
met: serving/admission_http.py); a 5xx means a bug or a failed model, never the client's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from lightbox.settings import Settings
from serving.admission_http import AdmissionMiddleware, ticket_of
from serving.batching import BatcherClosed
from serving.metrics import RequestMetricsMiddleware
from serving.reload import HotSwapper, ModelLoader
from serving.runtime import ApiError, InferenceRuntime, Prediction
from serving.uploads import uploaded_images
from serving.v2 import v2_router
from training.predictor import Predictor

log = logging.getLogger(__name__)


def prediction_json(p: Prediction, threshold: float) -> dict[str, Any]:
    """``score`` on the model's scale (``model.score_range``), null for a tags-only model."""
    score = round(p.score, 6) if p.predictor.has_score else None
    return {"score": score, "tags": p.tags(threshold)}


def model_json(p: Predictor) -> dict[str, Any]:
    """Which model answered, on which runtime, and the scale its scores are on (so a client can read 7.2
    as "of 10")."""
    rng = p.score_range
    return {
        "name": p.name,
        "version": p.version,
        "runtime": p.runtime,
        "score_name": p.score_name,
        "score_range": list(rng) if rng is not None else None,
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
        )
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(BatcherClosed)
    async def closed(_: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(503, "server is shutting down", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error: {type(exc).__name__}")


def create_app(
    settings: Settings,
    predictor: Predictor,
    *,
    loader: ModelLoader | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The serving app for ``predictor``. With a ``loader``, it can hot-swap to new registry versions."""
    runtime = InferenceRuntime(settings, predictor, registry)
    page = (Path(__file__).parent / "static" / "index.html").read_text("utf-8")
    swapper = (
        HotSwapper(
            runtime,
            loader,
            interval_s=settings.serve_reload_interval_s,
            warmup_sizes=(1, runtime.config.max_batch_size),
        )
        if loader is not None
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.batcher.reopen()
        follower = None
        if swapper is not None and settings.serve_reload_interval_s > 0:
            follower = asyncio.create_task(swapper.follow(), name="alias-follower")
        try:
            yield
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await runtime.aclose()

    app = FastAPI(title="lightbox", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime
    app.state.swapper = swapper
    _install_error_handlers(app)
    # Admission inside the request metrics, so that its refusals are counted as requests too.
    app.add_middleware(AdmissionMiddleware, admission=runtime.admission)
    app.add_middleware(RequestMetricsMiddleware, metrics=runtime.metrics)

    @app.post("/predict")
    async def predict(
        request: Request,
        threshold: float | None = Query(None, ge=0.0, le=1.0, description="minimum tag confidence"),
    ) -> dict[str, Any]:
        """Score and tag one image (raw body or multipart 'file') or several (multipart 'files')."""
        blobs, several = await uploaded_images(request, settings)
        ticket = ticket_of(request.scope)
        images = await runtime.decode(blobs, ticket)
        preds = await runtime.infer(images, "rest", ticket)
        cut = settings.serve_tag_threshold if threshold is None else threshold
        model = model_json(preds[0].predictor)
        if several:
            return {"predictions": [prediction_json(p, cut) for p in preds], "model": model}
        return prediction_json(preds[0], cut) | {"model": model}

    def registry_status() -> dict[str, Any]:
        """The alias, its version at the last poll, the served version and the last failed reload. Read
        from the swapper's memory: a health probe never waits on the registry."""
        if swapper is None:  # an app built around one model: nothing to follow
            return {"alias": None, "alias_version": None, "served_version": runtime.predictor.version}
        return swapper.status()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # "ok" while a model serves, even one behind its alias: the registry block says so, and a load
        # balancer must not take down the replica that still answers.
        return {
            "status": "ok",
            "model": model_json(runtime.predictor),
            "queue_depth": runtime.batcher.queue_depth,
            "registry": registry_status(),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(request: Request, force: bool = False) -> dict[str, Any]:
        """Re-resolve the alias now and hot-swap if it moved (``force``: reload even if not)."""
        token = settings.serve_admin_token
        if token is None:
            raise ApiError(404, "admin endpoints are disabled (no serve_admin_token configured)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if swapper is None:
            raise ApiError(409, "this server has no model loader to reload from")
        try:
            return await swapper.reload(force=force)
        except Exception as exc:  # reported to the operator, who asked; the old version keeps serving
            failed = swapper.last_error
            which = f" v{failed.version}" if failed is not None and failed.version else ""
            log.exception("forced reload of%s failed", which or " the alias")
            msg = (
                f"reload{which} failed, still serving v{runtime.predictor.version}: "
                f"{type(exc).__name__}: {exc}"
            )
            raise ApiError(500, msg) from exc

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.include_router(v2_router(runtime, registry_status))  # the second protocol, same runtime
    return app
