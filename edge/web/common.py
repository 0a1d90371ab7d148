"""What every router shares: the context (config, daemon, templates), the shapes of answers and their
OpenAPI declarations (so /openapi.json names every status and content type a route returns)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import Path, Query
from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from ..daemon import Daemon, DaemonConfig
from ..exam import Exam
from ..store import MAX_ID, StoreFullError
from ..wording import display

EDGE_DIR = FsPath(__file__).resolve().parent.parent
log = logging.getLogger("noa_edge.server")


@dataclass
class WebContext:
    cfg: DaemonConfig
    daemon: Daemon
    templates: Jinja2Templates
    max_upload: int  # bytes


class ErrorBody(BaseModel):
    """Every refusal: why, and which form field or parameter is to blame (when one is)."""
    detail: str
    field: str | None = None


# Path/query parameters that reach SQLite: range-checked here (422), never an OverflowError (500).
ExamId = Annotated[int, Path(ge=1, le=MAX_ID, description="Exam id (1 … 2^63−1)", examples=[1])]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip (0 … 2^63−1)")]


def declare(*statuses: int, **content: str) -> dict:
    """responses= for a route: the error statuses it can answer with (body ErrorBody), and for 200 the
    media types it returns besides/instead of JSON, e.g. declare(404, png="image/png")."""
    out: dict = {status: {"model": ErrorBody, "description": _REASONS.get(status, "refused")} for status in statuses}
    if content:
        out[200] = {"description": "OK", "content": {media: {"schema": {"type": "string", "format": "binary"}}
                                                     for media in content.values()}}
    return out


_REASONS = {400: "bad request", 401: "missing or wrong token", 403: "cross-site request refused",
            404: "not found", 409: "conflicts with the exam or the configuration", 413: "upload too large",
            421: "Host header not allowed", 422: "a parameter or form field is invalid (named in field)",
            429: "too many wrong tokens", 500: "internal error (see the daemon log)",
            502: "the PACS refused or is unreachable", 503: "no frame from the source",
            507: "not enough disk space; nothing stored"}


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    """Every refusal has the same body: {"detail": why, "field": which form field (when one is to blame)}."""
    body = {"detail": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


_refs = itertools.count(1)


def internal_error(what: str, exc: BaseException) -> JSONResponse:
    """A failure that is a bug or a fault: the traceback goes to the log under a reference number, the
    answer carries only that number (no exception type, message or path). A full disk is 507, not a bug."""
    if isinstance(exc, StoreFullError):
        return error(507, str(exc))
    ref = next(_refs)
    log.error("%s (ref %d)", what, ref, exc_info=exc)
    return error(500, f"{what}; see the daemon log (ref {ref})")


def exam_links(exam_id: int) -> dict:
    base = f"/exams/{exam_id}"
    return {"page": base, "frame": f"{base}/frame.png", "roi": f"{base}/roi.png", "overlay": f"{base}/overlay.png",
            "nomogram_svg": f"/api/exams/{exam_id}/nomogram.svg", "report_png": f"{base}/report.png",
            "report_pdf": f"{base}/report.pdf", "dicom_sc": f"{base}/sc.dcm", "dicom_sr": f"{base}/sr.dcm"}


def public_exam(exam: Exam) -> dict:
    """The exam as the API returns it: no image bytes, links instead."""
    out = {k: v for k, v in exam.items() if not k.endswith("_png")}
    out["links"] = exam_links(exam["id"])
    out["display"] = display(exam, strict=False)  # the words every surface shows (edge.wording)
    return out
