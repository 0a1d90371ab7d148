"""The FastAPI app beside the cart: the routers, the token/size guard, and serving it with uvicorn.

Every asset ships in edge/static (the cart is offline). Binds 127.0.0.1 by default; any other host
requires --token, checked on every request (header, cookie or ?token= once). Patient identifiers are
optional, stay in the local store and are never logged.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .. import DEMO_DISCLAIMER, __version__
from ..daemon import Daemon, DaemonConfig, check_config
from . import analyze, exams, exports, health, live, metrics, pages
from .common import EDGE_DIR, WebContext, error

log = logging.getLogger("noa_edge.server")

TOKEN_COOKIE = "noa_edge_token"


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
        log.info("noa-edge serving bundle %s (%s) on http://%s:%d", daemon.analyzer.manifest.get("name"),
                 "synthetic demo" if daemon.analyzer.synthetic_demo else "clinical", cfg.host, cfg.port)
        try:
            yield
        finally:
            daemon.stop()

    app = FastAPI(title="noa-edge", version=__version__, lifespan=lifespan,
                  description="NOA vs OA from testicular ultrasound, on the device. "
                              + DEMO_DISCLAIMER + " when the bundle is the synthetic demo.")
    app.mount("/static", StaticFiles(directory=str(EDGE_DIR / "static")), name="static")
    _add_guard(app, ctx)
    for router in (pages, live, analyze, exams, exports, health, metrics):
        app.include_router(router.build(ctx))
    return app


def _add_guard(app: FastAPI, ctx: WebContext) -> None:
    """Token (when set) and upload size on every request, before any route runs."""
    cfg, daemon, max_upload = ctx.cfg, ctx.daemon, ctx.max_upload

    @app.middleware("http")
    async def guard(request: Request, call_next):
        daemon.count("requests")
        set_cookie = False
        if cfg.token:
            given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                     or request.headers.get("x-token") or request.cookies.get(TOKEN_COOKIE) or "")
            if not given and request.query_params.get("token"):
                given, set_cookie = request.query_params["token"], True
            if not hmac.compare_digest(given.encode(), cfg.token.encode()):
                daemon.count("auth_failures")
                return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                  "or open the page once with ?token=TOKEN")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload + 64 * 1024:
            daemon.count("uploads_too_large")
            return error(413, f"upload of {int(length) / 1e6:.1f} MB exceeds the limit of {max_upload / 1e6:.1f} MB")
        response = await call_next(request)
        if set_cookie:
            response.set_cookie(TOKEN_COOKIE, cfg.token, httponly=True, samesite="strict")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def serve(cfg: DaemonConfig, ready: threading.Event | None = None) -> None:
    """Run the daemon in the foreground (blocking) with uvicorn."""
    app = create_app(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if ready is not None:
        threading.Thread(target=_signal_ready, args=(server, ready), daemon=True).start()
    server.run()


def _signal_ready(server: uvicorn.Server, ready: threading.Event) -> None:
    while not server.started:
        time.sleep(0.05)
    ready.set()
