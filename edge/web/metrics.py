"""/metrics: Prometheus text exposition of the daemon's counters, stage times and source state."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..daemon import Daemon, resident_memory_bytes
from .common import WebContext, declare


def metrics_text(d: Daemon) -> str:
    lines = []

    def metric(name, kind, help_, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"{name}{lab} {value}")

    c = d.counters
    metric("noa_edge_requests_total", "counter", "HTTP requests", [({}, c["requests"])])
    metric("noa_edge_analyses_total", "counter", "Analyses by outcome",
           [({"outcome": "ok"}, c["analyses_ok"]), ({"outcome": "rejected"}, c["analyses_rejected"]),
            ({"outcome": "failed"}, c["analyses_failed"])])
    metric("noa_edge_auto_analyses_total", "counter", "Analyses started by a freeze or a pushed image",
           [({}, c["auto_analyses"])])
    metric("noa_edge_uploads_too_large_total", "counter", "Uploads refused for size", [({}, c["uploads_too_large"])])
    metric("noa_edge_auth_failures_total", "counter", "Requests with a missing or wrong token",
           [({}, c["auth_failures"])])
    metric("noa_edge_exams_stored", "gauge", "Exams in the store", [({}, d.store.count())])
    metric("noa_edge_ood_exams_total", "counter", "Exams flagged as unlike the training data (OOD guard) since the "
           "bundle was loaded", [({}, d.analyzer.ood_flagged)])
    metric("noa_edge_ood_guard_active", "gauge", "1 when the bundle's out-of-distribution guard is active",
           [({}, 1 if d.analyzer.ood is not None else 0)])
    n = max(d.analyzer.analyses, 1)
    metric("noa_edge_stage_seconds_sum", "counter", "Time spent per pipeline stage",
           [({"stage": k}, round(v / 1000.0, 6)) for k, v in sorted(d.analyzer.stage_totals_ms.items())])
    metric("noa_edge_stage_seconds_count", "counter", "Analyses timed", [({}, d.analyzer.analyses)])
    metric("noa_edge_stage_seconds_mean", "gauge", "Mean time per stage",
           [({"stage": k}, round(v / 1000.0 / n, 6)) for k, v in sorted(d.analyzer.stage_totals_ms.items())])
    src = d.source_status()
    metric("noa_edge_source_up", "gauge", "1 when the capture source delivers frames",
           [({"state": src["state"]}, 1 if src["state"] == "live" else 0)])
    for key in ("frames_captured", "frames_dropped", "reconnects", "freezes"):
        extra = " (replaced before anyone read them)" if key == "frames_dropped" else ""
        metric(f"noa_edge_source_{key}_total", "counter", f"Capture {key.replace('_', ' ')}{extra}",
               [({}, src.get(key, 0))])
    storage = d.store.storage_status()
    if storage["free_bytes"] is not None:
        metric("noa_edge_disk_free_bytes", "gauge", "Free space on the data directory's filesystem",
               [({}, storage["free_bytes"])])
    metric("noa_edge_disk_min_free_bytes", "gauge", "Watermark (--min-free-mb) under which analyses are refused",
           [({}, storage["min_free_bytes"])])
    metric("noa_edge_store_bytes", "gauge", "Exam database and its WAL on disk", [({}, storage["db_bytes"])])
    metric("noa_edge_requests_refused_total", "counter", "Requests refused by the Host/Origin checks",
           [({}, c.get("requests_refused", 0))])
    metric("noa_edge_auth_lockouts_total", "counter", "Client addresses locked out after wrong tokens",
           [({}, c.get("auth_lockouts", 0))])
    inbox = d.inbox.stats()  # pushed images (folder, DICOM) stored and waiting for analysis
    metric("noa_edge_inbox_depth", "gauge", "Pushed images waiting for analysis", [({}, inbox["depth"])])
    metric("noa_edge_inbox_bytes", "gauge", "Bytes of pushed images waiting", [({}, inbox["bytes"])])
    metric("noa_edge_inbox_oldest_age_seconds", "gauge", "Age of the oldest waiting image (0 when none)",
           [({}, inbox["oldest_age_s"] or 0)])
    metric("noa_edge_inbox_items_total", "counter", "Inbox items by outcome (duplicates and refusals since start)",
           [({"outcome": k}, inbox[k]) for k in ("done", "failed", "duplicates", "refused_full")])
    ret = d.retention.stats.report()  # edge/retention.py: --keep-days, --max-exams, --max-disk-mb
    metric("noa_edge_retention_runs_total", "counter", "Retention passes", [({}, ret["runs"])])
    metric("noa_edge_retention_deleted_exams_total", "counter", "Exams deleted by retention",
           [({}, ret["deleted_total"])])
    metric("noa_edge_retention_freed_bytes_total", "counter", "Exam bytes deleted by retention",
           [({}, ret["bytes_freed_total"])])
    metric("noa_edge_retention_kept_unpushed", "gauge", "Exams a limit would delete, kept (not yet pushed to "
           "the PACS) at the last pass", [({}, ret["kept_unpushed"])])
    rss = resident_memory_bytes()
    if rss is not None:
        metric("process_resident_memory_bytes", "gauge", "Resident memory of the daemon", [({}, rss)])
    return "\n".join(lines) + "\n"


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses=declare(text="text/plain"))
    def metrics():
        return Response(metrics_text(ctx.daemon), media_type="text/plain; version=0.0.4")

    return router
