"""Stored exams as JSON, and the nomogram drawn with one exam's values."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from .common import WebContext, error, public_exam


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/api/exams", summary="Stored exams, newest first")
    def list_exams(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return {"total": d.store.count(), "exams": [public_exam(e) for e in d.store.list_exams(limit, offset)]}

    @router.get("/api/exams/{exam_id}", summary="One stored exam")
    def get_exam(exam_id: int):
        exam = d.store.get_exam(exam_id)
        return public_exam(exam) if exam else error(404, f"exam {exam_id} not found")

    @router.get("/api/exams/{exam_id}/nomogram.svg", summary="The nomogram with this exam's values marked")
    def nomogram_svg(exam_id: int):
        exam = d.store.get_exam(exam_id)
        if exam is None:
            return error(404, f"exam {exam_id} not found")
        svg = d.analyzer.nomogram_svg(exam)
        if svg is None:
            return error(404, "the bundle has no nomogram")
        return Response(svg, media_type="image/svg+xml")

    return router
