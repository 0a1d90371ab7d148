"""The HTML pages: live view + form (/), history, one exam. Jinja2 templates in edge/templates."""

from __future__ import annotations

import datetime

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from .. import DEMO_DISCLAIMER, __version__
from ..clinical import form_fields
from .common import Offset, WebContext, error, public_exam


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
    def history(request: Request, offset: Offset = 0, patient_id: str | None = Query(None),
                date: str | None = Query(None)):
        """Searchable by patient ID and local day; empty fields (a plain HTML form sends them) are no filter,
        a bad value is a message on the page (filter_error), not a JSON refusal."""
        typed_id, typed_date = (patient_id or "").strip(), (date or "").strip()
        pid: str | None = typed_id or None
        day: datetime.date | None = None
        problem = ""
        if pid is not None and len(pid) > 64:
            pid, problem = None, "patient ID: at most 64 characters"
        if typed_date:
            try:
                day = datetime.date.fromisoformat(typed_date)
            except ValueError:
                problem = f"date {typed_date!r}: use YYYY-MM-DD"
        exams = [public_exam(e) for e in d.store.list_exams(limit=100, offset=offset, patient_id=pid, day=day)]
        return page(request, "history.html", exams=exams, offset=offset, total=d.store.count(patient_id=pid, day=day),
                    patient_id=typed_id, date=typed_date, filter_error=problem)

    @router.get("/exams/{exam_id}", response_class=HTMLResponse, include_in_schema=False)
    def exam_page(request: Request, exam_id: int):
        exam = d.store.get_exam(exam_id)
        if exam is None:
            return error(404, d.store.missing(exam_id))
        return page(request, "exam.html", exam=public_exam(exam), svg=d.analyzer.nomogram_svg(exam))

    return router
