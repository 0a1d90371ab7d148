"""GET /api/health: is the daemon able to analyse now (source, bundle, runtime, store, disk space)?

status is "degraded" while the store refuses writes (free space under --min-free-mb, or SQLite said the
disk is full); `storage` says why. data_dir is the folder's name only (answers never show absolute paths).
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from .. import __version__
from ..daemon import resident_memory_bytes, without_paths
from .common import WebContext


def _scrubbed(value):
    """Every string in a nested answer with its directories removed (bundle path, model files...)."""
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return without_paths(value) if isinstance(value, str) else value


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/api/health", summary="Source state, bundle, runtime and delegate")
    def health():
        info = _scrubbed(d.analyzer.info())
        storage = d.store.storage_status()
        return {"status": "ok" if storage["ok"] else "degraded", "storage": storage, "version": __version__,
                "uptime_s": round(time.time() - d.started, 1), "source": d.source_status(), "bundle": info,
                "runtime": info["runtime"], "runtime_selection": d.analyzer.selection.report(),
                "ood": info.get("ood"),  # the out-of-distribution guard: active or why not, threshold
                "bundle_reloads": dict(d.bundle_reloads, last_error=without_paths(d.bundle_reloads["last_error"])),
                "delegate": info["runtime"].get("delegate"), "exams": d.store.count(),
                "data_dir": d.data_dir.name, "pacs": ctx.cfg.pacs, "resident_memory_bytes": resident_memory_bytes(),
                "inbox": d.inbox.stats()}

    return router
