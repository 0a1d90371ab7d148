"""One exam's pictures and exports: stored frame/ROI/overlay, report PNG/PDF, DICOM SC/SR, PACS push."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import Response

from .. import export as ex
from ..imaging import image_media_type
from ..report_pdf import report_pdf as render_report_pdf  # the route below is also called report_pdf
from .common import ExamId, WebContext, declare, error, internal_error

PDF = declare(404, 409, 422, pdf="application/pdf")
DICOM = declare(404, 409, 422, dicom="application/dicom")


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/exams/{exam_id}/{kind}.png", summary="Stored frame, ROI (PNG), CAM overlay (JPEG) or report (PNG)",
                response_class=Response, responses=declare(404, 409, 422, png="image/png", jpeg="image/jpeg"))
    def exam_image(exam_id: ExamId, kind: str = Path(description="frame | roi | overlay | report",
                                                     examples=["frame"])):
        if kind == "report":
            return export(exam_id, "report.png")
        if kind not in ("frame", "roi", "overlay"):
            return error(404, f"unknown image {kind!r}: frame, roi, overlay or report")
        data = d.store.get_image(exam_id, kind)  # the ROI image is derived from the frame by the store
        return Response(data, media_type=image_media_type(data)) if data else error(404, d.store.missing(exam_id))

    def export(exam_id: int, what: str):
        exam = d.store.get_exam(exam_id, with_images=True)
        if exam is None:
            return error(404, d.store.missing(exam_id))
        name = f"noa-edge-exam-{exam_id}"
        try:
            if what == "report.png":
                return Response(ex.report_png(exam), media_type="image/png")
            if what == "report.pdf":
                return Response(render_report_pdf(exam, d.analyzer.nomogram_svg(exam)), media_type="application/pdf",
                                headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'})
            ds = ex.secondary_capture(exam) if what == "sc.dcm" else ex.structured_report(exam)
            return Response(ex.to_dicom_bytes(ds), media_type="application/dicom",
                            headers={"Content-Disposition": f'attachment; filename="{name}-{what}"'})
        except ex.ExportError as exc:
            return error(409, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in an exporter: log it, answer with a reference
            return internal_error(f"export {what} of exam {exam_id} failed", exc)

    @router.get("/exams/{exam_id}/report.pdf", summary="One-page PDF report", response_class=Response,
                responses=PDF)
    def report_pdf(exam_id: ExamId):
        return export(exam_id, "report.pdf")

    @router.get("/exams/{exam_id}/sc.dcm", summary="DICOM Secondary Capture of the report", response_class=Response,
                responses=DICOM)
    def dicom_sc(exam_id: ExamId):
        return export(exam_id, "sc.dcm")

    @router.get("/exams/{exam_id}/sr.dcm", summary="DICOM Structured Report of the result", response_class=Response,
                responses=DICOM)
    def dicom_sr(exam_id: ExamId):
        return export(exam_id, "sr.dcm")

    @router.post("/api/exams/{exam_id}/push", summary="C-STORE the exam's SC + SR to the --pacs peer",
                 responses=declare(404, 409, 422, 502))
    def push(exam_id: ExamId):
        pacs = ctx.cfg.pacs
        if not pacs:
            return error(409, "no PACS configured: start the daemon with --pacs AE@host:port")
        exam = d.store.get_exam(exam_id, with_images=True)
        if exam is None:
            return error(404, d.store.missing(exam_id))
        try:
            results = ex.push_to_pacs([ex.secondary_capture(exam), ex.structured_report(exam)], pacs)
        except ex.PacsError as exc:
            return error(502, str(exc))
        except ex.ExportError as exc:
            return error(409, str(exc))
        ok = all(r["ok"] for r in results)
        if ok:
            d.store.record_push(exam_id, pacs)  # retention may now delete it (edge/retention.py)
        return {"pacs": pacs, "results": results, "ok": ok}

    return router
