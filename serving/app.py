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
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lightbox.settings import Settings
from serving.admission import CpuCost, LoopLag
from serving.admission_http import AdmissionMiddleware, query_value, ticket_of, v2_model_name
from serving.batching import BatcherClosed
from serving.canary import KEY_HEADER
from serving.challenger import Challenger, Recorder
from serving.cors import Cors, cors_headers
from serving.disconnect import unless_client_leaves
from serving.http_methods import HeadAndOptions
from serving.metrics import HttpMetrics, RequestMetricsMiddleware
from serving.minions import IsolatedPredictor, WorkerMetrics
from serving.multi import (
    LabelledRegistries,
    ModelError,
    ModelSet,
    MultiTicket,
    ServedModel,
    first_answer,
    infer_all,
)
from serving.reload import HotSwapper, ModelLoader
from serving.runtime import ApiError, InferenceRuntime, Prediction, usable_cores
from serving.uploads import CLIENT_CLOSED, request_timeout, uploaded_images
from serving.v2 import v2_router
from training.predictor import ModelNotFound, Predictor

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


def _answer(preds: list[Prediction], cut: float, several: bool) -> dict[str, Any]:
    """Today's answer of one model: one prediction, or ``predictions`` for several images."""
    model = model_json(preds[0].predictor)
    if several:
        return {"predictions": [prediction_json(p, cut) for p in preds], "model": model}
    return prediction_json(preds[0], cut) | {"model": model}


def _model_entry(result: list[Prediction] | ModelError, cut: float, several: bool) -> dict[str, Any]:
    """One model's part of a merged answer: its answer and version, or its error and status."""
    if isinstance(result, ModelError):
        return result.to_dict()
    return _answer(result, cut, several) | {"version": result[0].predictor.version}


def _served(
    settings: Settings, src: ModelSource, registry: CollectorRegistry | None, cpu: CpuCost
) -> ServedModel:
    runtime = InferenceRuntime(src.settings or settings, src.predictor, registry, cpu)
    if isinstance(src.predictor, IsolatedPredictor):  # its new versions are isolated too (IsolatedLoader)
        WorkerMetrics(runtime.registry, lambda: runtime.predictor)
    swapper = (
        HotSwapper(
            runtime,
            src.loader,
            interval_s=settings.serve_reload_interval_s,
            warmup_sizes=(1, runtime.config.max_batch_size),
        )
        if src.loader is not None
        else None
    )
    return ServedModel(src.name or src.predictor.name, runtime, swapper)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, cors_origins: Sequence[str] = ()) -> None:
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

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # A phone that lost its signal mid-upload: nobody reads the answer, and it is no server error
        # (a 5xx would page someone; a traceback per flaky client would flood the log).
        return _error(CLIENT_CLOSED, "the client closed the connection")

    @app.exception_handler(BatcherClosed)
    async def closed(_: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(503, "server is shutting down", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        # Answered outside the CORS middleware: a page must still read the error, not a CORS failure.
        headers = cors_headers(cors_origins, request.headers.get("origin"))
        return _error(500, f"internal error: {type(exc).__name__}", headers)


@dataclass(frozen=True)
class PendingChallenger:
    """A challenger whose alias names no version yet: the app polls ``loader`` (every
    ``serve_reload_interval_s``, or on ``POST /admin/reload?model=NAME``) and starts the canary/shadow
    once it resolves. ``prepare``: sizes the loaded version (serving.server.sized_for) off the loop."""

    loader: ModelLoader
    name: str
    prepare: Callable[[Predictor], Settings] | None = None


@dataclass(frozen=True)
class ModelSource:
    """A model to serve beside others: its first version, where new versions come from, its name."""

    predictor: Predictor
    loader: ModelLoader | None = None
    name: str | None = None  # default: the predictor's name
    settings: Settings | None = None  # its own (a batch cap calibrated on it); default: the app's


def create_app(
    settings: Settings,
    predictor: Predictor | Sequence[ModelSource],
    *,
    loader: ModelLoader | None = None,
    registry: CollectorRegistry | None = None,
    challenger: ModelSource | PendingChallenger | None = None,
    record_shadow: Recorder | None = None,
) -> FastAPI:
    """The serving app for ``predictor``. With a ``loader``, it can hot-swap to new registry versions.

    Several models (``ModelSource``s, the first the primary): each gets its own runtime and hot swap
    (serving/multi.py); ``/metrics`` labels their metrics with ``model``.

    ``challenger``: the primary's challenger, for canary and shadow (``serve_canary_percent``,
    ``serve_shadow_fraction``), or a ``PendingChallenger`` whose alias is not set yet (canary/shadow off
    until it is); ``record_shadow`` writes its agreement onto its registry version."""
    sources = [ModelSource(predictor, loader)] if isinstance(predictor, Predictor) else list(predictor)
    if loader is not None and not isinstance(predictor, Predictor):
        raise ValueError("with several models, each ModelSource carries its own loader")
    cpu = CpuCost(usable_cores())  # the process's CPU, shared by its models (admission's rate bound)
    lag = LoopLag(cores=usable_cores())  # the event loop's, as admission counts it
    models = ModelSet(
        [_served(settings, src, registry if len(sources) == 1 else None, cpu) for src in sources]
    )
    runtime = models.primary.runtime
    page = (Path(__file__).parent / "static" / "index.html").read_text("utf-8")
    pending = challenger if isinstance(challenger, PendingChallenger) else None

    def make_rival(src: ModelSource) -> Challenger:
        return Challenger(
            _served(settings, src, None, cpu),
            canary_percent=settings.serve_canary_percent,
            shadow_fraction=settings.serve_shadow_fraction,
            tag_threshold=settings.serve_tag_threshold,
            champion_tags=runtime.predictor.tag_names,
            recorder=record_shadow,
        )

    rival = make_rival(challenger) if isinstance(challenger, ModelSource) else None
    per_model: dict[str, CollectorRegistry] = {}
    if models.several or challenger is not None:
        # The app's HTTP metrics, unlabelled, beside each model's own registry labelled with its name.
        http = HttpMetrics(registry or CollectorRegistry())
        exported = CollectorRegistry(auto_describe=False)
        per_model.update({m.name: m.runtime.registry for m in models})
        if rival is not None:
            per_model[f"{models.primary.name}@challenger"] = rival.model.runtime.registry
        exported.register(LabelledRegistries(http.registry, per_model))
    else:  # one model: today's registry, names and labels unchanged
        http, exported = runtime.metrics, runtime.registry
    timeout_s = None if settings.serve_model_timeout_ms is None else settings.serve_model_timeout_ms / 1000

    followers: list[asyncio.Task[None]] = []

    def start_following(m: ServedModel) -> None:
        m.runtime.batcher.reopen()
        m.runtime.admission.loop_lag = lag  # one loop, one lag: every model's admission counts it
        if m.swapper is not None and settings.serve_reload_interval_s > 0:
            followers.append(asyncio.create_task(m.swapper.follow(), name=f"alias-follower-{m.name}"))

    def start_rival(r: Challenger) -> None:
        start_following(r.model)
        if settings.serve_shadow_record_interval_s > 0:
            recording = r.record_forever(settings.serve_shadow_record_interval_s)
            followers.append(asyncio.create_task(recording, name="shadow-recorder"))

    async def adopt(p: PendingChallenger) -> Challenger:
        """Load the pending challenger's version (ModelNotFound while its alias is unset) and start the
        canary/shadow on it."""
        nonlocal rival, pending
        predictor = await asyncio.to_thread(p.loader.load, await asyncio.to_thread(p.loader.resolve))
        own = await asyncio.to_thread(p.prepare, predictor) if p.prepare is not None else None
        if pending is not p:  # adopted meanwhile (the follower and an admin reload)
            assert rival is not None
            return rival
        new = make_rival(ModelSource(predictor, p.loader, p.name, own))
        per_model[f"{models.primary.name}@challenger"] = new.model.runtime.registry
        start_rival(new)
        rival, pending = new, None
        app.state.challenger = new
        log.info("challenger %r: canary/shadow on", predictor)
        return new

    async def await_challenger(p: PendingChallenger) -> None:
        """Poll the challenger's alias until it names a version (a failure other than the alias unset
        is logged once, in one line)."""
        logged = None
        while pending is p:
            await asyncio.sleep(settings.serve_reload_interval_s)
            try:
                await adopt(p)
            except ModelNotFound:
                continue
            except Exception as exc:  # a broken challenger must not take the champion down: log, go on
                line = " ".join(f"{type(exc).__name__}: {exc}".split())
                if line != logged:
                    logged = line
                    log.error("challenger %s not loaded (%s); canary/shadow still off", p.name, line)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for m in models:
            start_following(m)
        if rival is not None:
            start_rival(rival)
        if pending is not None and settings.serve_reload_interval_s > 0:
            followers.append(asyncio.create_task(await_challenger(pending), name="challenger-wait"))
        followers.append(asyncio.create_task(lag.run(), name="loop-lag"))
        try:
            yield
        finally:
            while followers:  # (a challenger adopted meanwhile added its own)
                follower = followers.pop()
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if rival is not None:
                await rival.drain()
            for m in [*models, rival.model] if rival is not None else list(models):
                await m.runtime.aclose()
                # An isolated model's worker process ends with the app (serving/minions.py).
                if isinstance(m.runtime.predictor, IsolatedPredictor):
                    await asyncio.to_thread(m.runtime.predictor.close)

    def admit(scope: MutableMapping[str, Any], route: str) -> MultiTicket:
        if route == "/predict":
            selected = models.known(query_value(scope, "models"))
        else:  # V2: the model in the path; an unknown one is admitted here and answered 404 by the handler
            name = v2_model_name(scope.get("path", ""))
            selected = [m for m in models if m.name == name]
        return MultiTicket.admit(selected)

    app = FastAPI(title="lightbox", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.runtime = runtime  # the primary's (the only one of a one-model server)
    app.state.swapper = models.primary.swapper
    app.state.models = models
    app.state.challenger = rival  # None until a pending challenger's alias is set (adopt)
    app.state.registry = exported
    _install_error_handlers(app, settings.cors_origins)
    # Admission inside the request metrics, so that its refusals are counted as requests too.
    app.add_middleware(AdmissionMiddleware, admit=admit, lag=lag)
    # HEAD and OPTIONS inside the request metrics, so that a load balancer's checks are counted as such.
    app.add_middleware(HeadAndOptions, routes=lambda: app.routes)
    app.add_middleware(RequestMetricsMiddleware, metrics=http)
    if settings.cors_origins:  # outermost: a 429 or a 413 must reach the page too, not a CORS error
        app.add_middleware(Cors, origins=settings.cors_origins)

    @app.post("/predict")
    async def predict(
        request: Request,
        threshold: float | None = Query(
            None, ge=0.0, le=1.0, description="minimum tag confidence (also a form field or JSON key)"
        ),
        models_q: str | None = Query(
            None, alias="models", description="comma-separated models to ask (default: all served)"
        ),
        timeout_ms: str | None = Query(
            None, description="when the client gives up: refused (429) or failed (503) rather than late"
        ),
    ) -> dict[str, Any]:
        """Score and tag one image (raw body, multipart 'file', JSON "image") or several (multipart
        'files', JSON "images")."""
        selected = models.select(models_q)
        timeout = request_timeout(request, ("timeout_ms", timeout_ms, 0.001))
        if timeout is not None:
            ticket_of(request.scope).set_timeout(timeout)
        upload = await uploaded_images(request, settings)
        if threshold is None:
            threshold = upload.threshold
        cut = settings.serve_tag_threshold if threshold is None else threshold
        return await unless_client_leaves(
            request, answer(request, selected, upload.images, upload.several, cut)
        )

    async def answer(
        request: Request, selected: list[ServedModel], blobs: list[bytes], several: bool, cut: float
    ) -> dict[str, Any]:
        ticket = ticket_of(request.scope)
        # Every model takes the same input (lightbox.imaging's preprocessing): decoded once for all.
        images = await selected[0].runtime.decode(blobs, ticket)
        # Canary: this key's users see the challenger in the primary's place (on the primary's ticket).
        # A challenger whose alias was removed pauses (its swapper says so) until the alias is set again.
        live = rival if rival is not None and not rival_paused(rival) else None
        canary = live is not None and live.routes(request.headers.get(KEY_HEADER))
        if canary and live is not None:
            selected = [replace(live.model, name=m.name) if m is models.primary else m for m in selected]
        if not models.several:
            preds = await selected[0].runtime.infer(images, "rest", ticket)
            if live is not None and not canary:
                live.shadow(images, preds)
            return _answer(preds, cut, several)
        assert isinstance(ticket, MultiTicket)
        results = await infer_all(selected, images, "rest", ticket, timeout_s)
        primary = results.get(models.primary.name)
        if live is not None and not canary and isinstance(primary, list):
            live.shadow(images, primary)
        _, preds = first_answer(results)
        return _answer(preds, cut, several) | {
            "models": {name: _model_entry(r, cut, several) for name, r in results.items()}
        }

    def rival_paused(r: Challenger) -> bool:
        return r.model.swapper is not None and r.model.swapper.alias_gone

    challenger_name = challenger.name if challenger is not None else None

    def challenger_status() -> dict[str, Any] | None:
        """The canary/shadow's challenger: waiting for its alias, serving, or paused (alias removed)."""
        if challenger is None:
            return None
        if rival is None:
            alias = getattr(pending.loader if pending else None, "alias", None)
            return {"name": challenger_name, "state": f"off until @{alias} is set", "model": None}
        state = "paused: its alias names no version" if rival_paused(rival) else "serving"
        return {
            "name": challenger_name,
            "state": state,
            "model": model_json(rival.model.runtime.predictor),
            "registry": swapper_status(rival.model),
        }

    def swapper_status(m: ServedModel) -> dict[str, Any]:
        """The alias, its version at the last poll, the served version and the last failed reload. Read
        from the swapper's memory: a health probe never waits on the registry."""
        if m.swapper is None:  # an app built around one model: nothing to follow
            return {"alias": None, "alias_version": None, "served_version": m.runtime.predictor.version}
        return m.swapper.status()

    def registry_status() -> dict[str, Any]:
        status = swapper_status(models.primary)
        if models.several:
            status = status | {"models": {m.name: swapper_status(m) for m in models}}
        return status

    def worker_status(m: ServedModel) -> dict[str, Any]:
        """An isolated model's worker: up, restarting and why (serving/minions.py); else nothing."""
        p = m.runtime.predictor
        return {"worker": p.health()} if isinstance(p, IsolatedPredictor) else {}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # "ok" while every model serves, even one behind its alias: the registry block says so, and a
        # load balancer must not take down the replica that still answers. "degraded": an isolated
        # model's worker is down (its "worker" block says why); the others still answer.
        workers = {m.name: worker_status(m) for m in models}
        down = any(w and w["worker"]["worker"] != "up" for w in workers.values())
        body = {
            "status": "degraded" if down else "ok",
            "model": model_json(runtime.predictor),
            "queue_depth": runtime.batcher.queue_depth,
            "registry": swapper_status(models.primary),
        } | workers[models.primary.name]
        if challenger is not None:
            body["challenger"] = challenger_status()
        if models.several:
            body["models"] = {
                m.name: {
                    "model": model_json(m.runtime.predictor),
                    "queue_depth": m.runtime.batcher.queue_depth,
                    "registry": swapper_status(m),
                }
                | workers[m.name]
                for m in models
            }
        return body

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(exported), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(request: Request, force: bool = False, model: str | None = None) -> dict[str, Any]:
        """Re-resolve the alias now and hot-swap if it moved (``force``: reload even if not). With
        several models: the one named by ``?model=`` (default: the primary)."""
        token = settings.serve_admin_token
        if token is None:
            raise ApiError(404, "admin endpoints are disabled (no serve_admin_token configured)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if model is not None and model == challenger_name:
            if rival is None:
                assert pending is not None
                try:
                    new = await adopt(pending)
                except ModelNotFound as exc:
                    raise ApiError(409, f"canary/shadow still off: {' '.join(str(exc).split())}") from exc
                return {"swapped": True, "version": new.model.runtime.predictor.version}
            target = rival.model
        else:
            target = models.primary if model is None else models.get(model)
        swapper = target.swapper
        if swapper is None:
            raise ApiError(409, "this server has no model loader to reload from")
        try:
            return await swapper.reload(force=force)
        except Exception as exc:  # reported to the operator, who asked; the old version keeps serving
            failed = swapper.last_error
            which = f" v{failed.version}" if failed is not None and failed.version else ""
            log.exception("forced reload of%s failed", which or " the alias")
            msg = (
                f"reload{which} failed, still serving v{target.runtime.predictor.version}: "
                f"{type(exc).__name__}: {exc}"
            )
            raise ApiError(500, msg) from exc

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.include_router(v2_router(models, registry_status))  # the second protocol, same runtimes
    return app
