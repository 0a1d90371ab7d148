"""What every router shares: the context (config, daemon, templates) and the shapes of answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates

from ..daemon import Daemon, DaemonConfig
from ..exam import Exam

EDGE_DIR = Path(__file__).resolve().parent.parent


@dataclass
class WebContext:
    cfg: DaemonConfig
    daemon: Daemon
    templates: Jinja2Templates
    max_upload: int  # bytes


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    """Every refusal has the same body: {"detail": why, "field": which form field (when one is to blame)}."""
    body = {"detail": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def exam_links(exam_id: int) -> dict:
    base = f"/exams/{exam_id}"
    return {"page": base, "frame": f"{base}/frame.png", "roi": f"{base}/roi.png", "overlay": f"{base}/overlay.png",
            "nomogram_svg": f"/api/exams/{exam_id}/nomogram.svg", "report_png": f"{base}/report.png",
            "report_pdf": f"{base}/report.pdf", "dicom_sc": f"{base}/sc.dcm", "dicom_sr": f"{base}/sr.dcm"}


def public_exam(exam: Exam) -> dict:
    """The exam as the API returns it: no image bytes, links instead."""
    out = {k: v for k, v in exam.items() if not k.endswith("_png")}
    out["links"] = exam_links(exam["id"])
    return out
