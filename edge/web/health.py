"""GET /api/health: is the daemon able to analyse now (source, bundle, runtime, store)?"""

from __future__ import annotations

import time

from fastapi import APIRouter

from .. import __version__
from ..daemon import resident_memory_bytes
from .common import WebContext


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/api/health", summary="Source state, bundle, runtime and delegate")
    def health():
        info = d.analyzer.info()
        return {"status": "ok", "version": __version__, "uptime_s": round(time.time() - d.started, 1),
                "source": d.source_status(), "bundle": info, "runtime": info["runtime"],
                "delegate": info["runtime"].get("delegate"), "exams": d.store.count(),
                "data_dir": str(d.data_dir), "pacs": ctx.cfg.pacs, "resident_memory_bytes": resident_memory_bytes()}

    return router
