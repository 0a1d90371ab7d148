"""The patient over HTTP: the open patient context, the one parser for the page, and the patient summary.

PUT/GET/DELETE /api/context: the context automatic analyses use (DELETE = "New patient"). POST /api/parse:
the page checks fields as they are typed with the same code analyze uses (no JavaScript copy of the rules).
GET /api/patients/{patient_id}/summary: the newest result per testis and the patient-level result.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from .. import wording
from ..clinical import check_clinical
from ..errors import InputError
from ..exam import Exam
from ..patient import MAX_PATIENT_ID, PATIENT_RULE, clean_patient_id, clean_side, newest_per_side, summarize
from .common import WebContext, declare, error, public_exam

MAX_PATIENT_EXAMS = 500  # the summary looks at a patient's newest 500 exams


async def form_or_json(request: Request) -> dict:
    """The request body as a flat dict of fields: JSON object, urlencoded or multipart form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise InputError("body", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InputError("body", "the JSON body must be an object of fields")
        return body
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if not await request.body():
        return {}
    raise InputError("body", f"send the fields as JSON or a form, not {kind or 'an untyped body'}")


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/api/context", summary="The open patient context (patient_id null when none)")
    def get_context():
        c = d.context.get()
        return c.public() if c else {"patient_id": None, "values": {}}

    @router.put("/api/context", summary="Open the patient context (ID + clinical values) automatic analyses use",
                description="JSON or form: patient_id (required), fsh, volume_ml or length_cm/width_cm/height_cm, "
                            "edv (or edv_cm_s). Parsed with the one parser; a bad value → 422 naming the field "
                            "and the previous context stays as it was.",
                responses=declare(422))
    async def put_context(request: Request):
        try:
            form = await form_or_json(request)
            return d.context.open(form, d.analyzer.clinical_ranges()).public()
        except InputError as exc:
            return error(422, str(exc), exc.field)

    @router.delete("/api/context", summary="New patient: close the context (automatic analyses become DL-only)")
    def delete_context():
        old = d.context.clear()
        return {"patient_id": None, "values": {}, "closed": old.patient_id if old else None}

    @router.post("/api/parse", summary="Check typed clinical values with the server's parser",
                 description="JSON or form with the analyze fields → {values (keyed as in the exam), errors "
                             "{field: message}}. Nothing is stored.", responses=declare(422))
    async def parse(request: Request):
        try:
            form = await form_or_json(request)
        except InputError as exc:
            return error(422, str(exc), exc.field)
        values, errors = check_clinical(form, d.analyzer.clinical_ranges())
        for name, check in (("patient_id", clean_patient_id), ("side", clean_side)):
            try:
                check(form.get(name))
            except InputError as exc:
                errors[exc.field] = str(exc)
        return {"values": values, "errors": errors}

    @router.get("/api/patients/{patient_id}/summary", summary="Newest result per testis and the patient-level result",
                responses=declare(404, 422))
    def patient_summary(patient_id: str):
        try:
            pid = clean_patient_id(patient_id)
        except InputError as exc:
            return error(422, str(exc), exc.field)
        if pid is None:
            return error(422, f"patient ID must be 1–{MAX_PATIENT_ID} characters", "patient_id")
        exams = d.store.list_exams(MAX_PATIENT_EXAMS, 0, patient_id=pid)
        if not exams:
            return error(404, f"no exams for patient {pid}", "patient_id")
        a = d.analyzer
        sides = newest_per_side(exams)
        result = summarize(sides, {"nomogram": a.threshold, "dl_only": a.dl_threshold},
                           {"positive": a.positive, "negative": a.negative})
        if result is not None:
            ptxt, ttxt = wording.pair_texts(result["probability"], result["threshold"])
            result.update(probability_text=ptxt, threshold_text=ttxt,
                          sentence=wording.patient_sentence(result, a.positive))
        return {"patient_id": pid, "sides": {s: (public_exam(Exam(**sides[s])) if s in sides else None) for s in "LR"},
                "patient": result, "rule": PATIENT_RULE, "exams_total": len(exams),
                "unsided_exams": sum(1 for e in exams if e.get("side") not in ("L", "R"))}

    return router
