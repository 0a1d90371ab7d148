"""The FastAPI app beside the cart: the routers, the HTTP guard (edge/web/security.py), one error shape for
every refusal, an OpenAPI schema that names every status and media type, and serving it with uvicorn.

Every asset ships in edge/static (the cart is offline). Binds 127.0.0.1 by default; any other host
requires --token, checked on every request (header, session cookie or ?token= once). Patient identifiers
are optional, stay in the local store and are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from .. import DEMO_DISCLAIMER, __version__
from ..daemon import Daemon, DaemonConfig, check_config
from ..store import StoreFullError
from . import analyze, context, docs, exams, exports, frames, health, live, metrics, pages
from .common import _REASONS, EDGE_DIR, ErrorBody, WebContext, error
from .security import HttpGuard

log = logging.getLogger("noa_edge.server")

ROUTERS = [pages, live, frames, analyze, context, exams, exports, health, metrics, docs]
EVERY_ROUTE = (401, 421, 429, 500)  # guard and faults: any route can answer these
STATE_CHANGING = (400, 403, 413)    # POST/PUT/PATCH/DELETE: malformed body, Origin check, body size


def create_app(cfg: DaemonConfig) -> FastAPI:
    """The FastAPI app; the daemon (model, store) loads now, so a bad bundle fails before the server
    binds; capture starts in the lifespan."""
    check_config(cfg)
    daemon = Daemon(cfg)
    ctx = WebContext(cfg=cfg, daemon=daemon, templates=Jinja2Templates(directory=str(EDGE_DIR / "templates")),
                     max_upload=int(cfg.max_upload_mb * 1024 * 1024))

    @asynccontextmanager
    async def lifespan(app):
        daemon.start_capture()
        daemon.announce_ready(asyncio.get_running_loop())  # systemd READY=1, then the watchdog
        log.info("noa-edge serving bundle %s (%s) on http://%s:%d", daemon.analyzer.manifest.get("name"),
                 "synthetic demo" if daemon.analyzer.synthetic_demo else "clinical", cfg.host, cfg.port)
        try:
            yield
        finally:
            daemon.stop()

    app = FastAPI(title="noa-edge", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # /docs is served offline by web/docs.py
                  description="NOA vs OA from testicular ultrasound, on the device. "
                              + DEMO_DISCLAIMER + " when the bundle is the synthetic demo. "
                              "Every refusal is {detail, field?}.")
    app.mount("/static", StaticFiles(directory=str(EDGE_DIR / "static")), name="static")
    _add_error_handlers(app)
    app.add_middleware(HttpGuard, cfg=cfg, daemon=daemon, max_upload=ctx.max_upload)
    for router in ROUTERS:
        app.include_router(router.build(ctx))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented schema override
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """One body for every refusal, {"detail", "field"?}; a full disk is 507 wherever it surfaces."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "cookie")]
        field = loc[0] if loc else None
        msg = first.get("msg", "invalid request")
        return error(422, f"{field}: {msg}" if field else msg, field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreFullError)
    async def store_full(request: Request, exc: StoreFullError):
        return error(507, str(exc))


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus what the guard and the error handlers answer on every route, with the one
    error body (validation errors included)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    err = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            responses = op.setdefault("responses", {})
            statuses = EVERY_ROUTE + (STATE_CHANGING if method.upper() not in ("GET", "HEAD", "OPTIONS") else ())
            for status in statuses:
                responses.setdefault(str(status), {"description": _REASONS[status], "content": err})
            if "422" in responses:
                responses["422"] = {"description": _REASONS[422], "content": err}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = spec
    return spec


def serve(cfg: DaemonConfig, ready: threading.Event | None = None, sock=None) -> None:
    """Run the daemon in the foreground (blocking) with uvicorn; `sock`: an already bound listening socket
    (the CLI binds first, so a port in use is one clear line before any URL is printed)."""
    app = create_app(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if ready is not None:
        threading.Thread(target=_signal_ready, args=(server, ready), daemon=True).start()
    server.run(sockets=[sock] if sock is not None else None)


def _signal_ready(server: uvicorn.Server, ready: threading.Event) -> None:
    while not server.started:
        time.sleep(0.05)
    ready.set()
