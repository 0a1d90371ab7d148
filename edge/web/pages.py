"""The HTML pages: live view + form (/), history, one exam. Jinja2 templates in edge/templates."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from .. import DEMO_DISCLAIMER, __version__
from ..clinical import form_fields
from .common import WebContext, error, public_exam


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    def page(request: Request, name: str, **context):
        return ctx.templates.TemplateResponse(request, name, {
            "bundle": d.analyzer.info(), "source": d.source_status(), "disclaimer": DEMO_DISCLAIMER,
            "version": __version__, "pacs": ctx.cfg.pacs, **context})

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request):
        return page(request, "index.html", fields=form_fields(d.analyzer.clinical_ranges()))

    @router.get("/history", response_class=HTMLResponse, include_in_schema=False)
    def history(request: Request, offset: int = Query(0, ge=0)):
        exams = d.store.list_exams(limit=100, offset=offset)
        return page(request, "history.html", exams=exams, offset=offset, total=d.store.count())

    @router.get("/exams/{exam_id}", response_class=HTMLResponse, include_in_schema=False)
    def exam_page(request: Request, exam_id: int):
        exam = d.store.get_exam(exam_id)
        if exam is None:
            return error(404, f"exam {exam_id} not found")
        return page(request, "exam.html", exam=public_exam(exam), svg=d.analyzer.nomogram_svg(exam))

    return router
