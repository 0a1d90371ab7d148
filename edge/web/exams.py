"""Stored exams as JSON, and the nomogram drawn with one exam's values."""

from __future__ import annotations

import datetime

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ..store import MAX_ID
from .common import ExamId, Offset, WebContext, declare, error, public_exam


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/api/exams", summary="Stored exams, newest first (since_id: the newer ones, oldest first)",
                responses=declare(422))
    def list_exams(limit: int = Query(50, ge=1, le=500), offset: Offset = 0,
                   patient_id: str | None = Query(None, min_length=1, max_length=64, description="only this patient"),
                   since_id: int | None = Query(None, ge=0, le=MAX_ID,
                                                description="exams with id > since_id, oldest first"),
                   date: datetime.date | None = Query(None, description="YYYY-MM-DD, the cart's local day")):
        exams = d.store.list_exams(limit, offset, patient_id=patient_id, since_id=since_id, day=date)
        return {"total": d.store.count(patient_id=patient_id, since_id=since_id, day=date),
                "exams": [public_exam(e) for e in exams]}

    @router.get("/api/exams/{exam_id}", summary="One stored exam", responses=declare(404, 422))
    def get_exam(exam_id: ExamId):
        exam = d.store.get_exam(exam_id)
        return public_exam(exam) if exam else error(404, d.store.missing(exam_id))

    @router.get("/api/exams/{exam_id}/nomogram.svg", summary="The nomogram with this exam's values marked",
                response_class=Response, responses=declare(404, 422, svg="image/svg+xml"))
    def nomogram_svg(exam_id: ExamId):
        exam = d.store.get_exam(exam_id)
        if exam is None:
            return error(404, d.store.missing(exam_id))
        svg = d.analyzer.nomogram_svg(exam)
        if svg is None:
            return error(404, "the bundle has no nomogram")
        return Response(svg, media_type="image/svg+xml")

    return router
