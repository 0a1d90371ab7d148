"""`noa-edge serve`: the daemon beside the ultrasound cart — live view, ROI, result page, JSON API, exports.

FastAPI + Jinja2; every asset ships in edge/static (the cart is offline). Binds 127.0.0.1 by default;
any other host requires --token, checked on every request (header, cookie or ?token= once). Patient
identifiers are optional, stay in the local store and are never logged.
"""


import hmac
import ipaddress
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import DEMO_DISCLAIMER, __version__

log = logging.getLogger("noa_edge.server")

HERE = Path(__file__).parent
DEFAULT_BUNDLE = "firmware_assets/demo-phantom"
VARIANTS = ("auto", "fp32", "fp16", "int8", "edgetpu")
TOKEN_COOKIE = "noa_edge_token"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "noa-edge"


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle path as given, else relative to the checkout (so `noa-edge serve` works from anywhere)."""
    path = Path(bundle)
    if path.is_dir() or path.is_absolute():
        return path
    alt = HERE.parent / path
    return alt if alt.is_dir() else path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class DaemonConfig:
    bundle: str = DEFAULT_BUNDLE
    source: str | None = "demo"
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    data_dir: str | None = None
    pacs: str | None = None
    variant: str = "auto"
    threads: int | None = None
    max_upload_mb: float = 20.0
    freeze_threshold: float = 0.5
    freeze_frames: int = 8
    auto_analyze: bool = True
    extra: dict = field(default_factory=dict)


class ConfigError(ValueError):
    """A serve option that cannot work; the message says which and why."""


def check_config(cfg: DaemonConfig) -> None:
    if not is_loopback(cfg.host) and not cfg.token:
        raise ConfigError(f"--host {cfg.host} is reachable from the network: pass --token SECRET "
                          "(checked on every request) or bind 127.0.0.1")
    if cfg.token is not None and len(cfg.token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"--variant {cfg.variant!r}: choose one of {', '.join(VARIANTS)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("--threads must be ≥ 1")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port {cfg.port} must be 1–65535")
    if cfg.pacs:
        from .dicom_io import DicomConfigError, parse_pacs

        try:
            parse_pacs(cfg.pacs)
        except DicomConfigError as exc:
            raise ConfigError(str(exc)) from None
    if not (resolve_bundle(cfg.bundle) / "manifest.json").is_file():
        raise ConfigError(f"--bundle {cfg.bundle}: no manifest.json there (build one with `noa-edge convert`, "
                          "or `make firmware` for the demo bundle)")


class Daemon:
    """Everything the routes share: store, analyzer, capture thread, counters."""

    def __init__(self, cfg: DaemonConfig):
        from .pipeline import Analyzer
        from .store import ExamStore

        self.cfg = cfg
        self.started = time.time()
        self.data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
        self.store = ExamStore(self.data_dir)
        self.analyzer = Analyzer(resolve_bundle(cfg.bundle), variant=cfg.variant, threads=cfg.threads,
                                 store=self.store)
        self.grabber = None
        self.counters = {"requests": 0, "analyses_ok": 0, "analyses_rejected": 0, "analyses_failed": 0,
                         "auto_analyses": 0, "uploads_too_large": 0, "auth_failures": 0}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def start_capture(self) -> None:
        if not self.cfg.source:
            return
        from .capture import FrameGrabber, FreezeDetector, open_source

        source = open_source(self.cfg.source, listen_host=self.cfg.host)
        self.grabber = FrameGrabber(source, on_still=self._on_still if self.cfg.auto_analyze else None,
                                    freeze=FreezeDetector(self.cfg.freeze_threshold, self.cfg.freeze_frames)).start()

    def stop(self) -> None:
        if self.grabber is not None:
            self.grabber.stop()
        self.store.close()

    def _on_still(self, frame: np.ndarray, trigger: str, info: dict) -> None:
        extra = {k: info[k] for k in ("study_instance_uid", "sop_instance_uid", "modality") if info.get(k)}
        try:
            self.analyzer.analyze(frame, trigger=trigger, source=self.grabber.source.describe,
                                  patient_id=info.get("patient_id"), extra=extra)
            self.count("auto_analyses")
            self.count("analyses_ok")
        except Exception:
            self.count("analyses_failed")
            raise

    def source_status(self) -> dict:
        if self.grabber is None:
            return {"source": None, "state": "none", "error": "", "frozen": False}
        return self.grabber.status()


def _exam_links(exam_id: int) -> dict:
    base = f"/exams/{exam_id}"
    return {"page": base, "frame": f"{base}/frame.png", "roi": f"{base}/roi.png", "overlay": f"{base}/overlay.png",
            "nomogram_svg": f"/api/exams/{exam_id}/nomogram.svg", "report_png": f"{base}/report.png",
            "report_pdf": f"{base}/report.pdf", "dicom_sc": f"{base}/sc.dcm", "dicom_sr": f"{base}/sr.dcm"}


def public_exam(exam: dict) -> dict:
    """The exam as the API returns it: no image bytes, links instead."""
    out = {k: v for k, v in exam.items() if not k.endswith("_png")}
    out["links"] = _exam_links(exam["id"])
    return out


def export_exam(exam: dict) -> dict:
    """The store's exam in the shape edge/export.py reads (it documents the keys)."""
    return dict(exam)


def create_app(cfg: DaemonConfig):
    """The FastAPI app; the daemon (model, store, capture) starts in the lifespan."""
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates

    from .pipeline import InputError, decode_image_bytes, parse_clinical
    from .roi import find_image_area, parse_roi, propose_roi

    check_config(cfg)
    max_upload = int(cfg.max_upload_mb * 1024 * 1024)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    daemon = Daemon(cfg)  # loads the bundle now, so a bad bundle fails before the server binds
    state: dict = {"daemon": daemon}

    @asynccontextmanager
    async def lifespan(app):
        daemon.start_capture()
        log.info("noa-edge serving bundle %s (%s) on http://%s:%d", daemon.analyzer.manifest.get("name"),
                 "synthetic demo" if daemon.analyzer.synthetic_demo else "clinical", cfg.host, cfg.port)
        try:
            yield
        finally:
            daemon.stop()

    app = FastAPI(title="noa-edge", version=__version__, lifespan=lifespan,
                  description="NOA vs OA from testicular ultrasound, on the device. "
                              + DEMO_DISCLAIMER + " when the bundle is the synthetic demo.")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def D() -> Daemon:
        return state["daemon"]

    def error(status: int, message: str, field: str | None = None):
        body = {"detail": message}
        if field:
            body["field"] = field
        return JSONResponse(body, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        daemon = state.get("daemon")
        if daemon:
            daemon.count("requests")
        set_cookie = False
        if cfg.token:
            given = (request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                     or request.headers.get("x-token") or request.cookies.get(TOKEN_COOKIE) or "")
            if not given and request.query_params.get("token"):
                given, set_cookie = request.query_params["token"], True
            if not hmac.compare_digest(given.encode(), cfg.token.encode()):
                if daemon:
                    daemon.count("auth_failures")
                return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                  "or open the page once with ?token=TOKEN")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload + 64 * 1024:
            if daemon:
                daemon.count("uploads_too_large")
            return error(413, f"upload of {int(length) / 1e6:.1f} MB exceeds the limit of {max_upload / 1e6:.1f} MB")
        response = await call_next(request)
        if set_cookie:
            response.set_cookie(TOKEN_COOKIE, cfg.token, httponly=True, samesite="strict")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------------------------ pages
    def page(request: Request, name: str, **context):
        d = D()
        return templates.TemplateResponse(request, name, {
            "bundle": d.analyzer.info(), "source": d.source_status(), "disclaimer": DEMO_DISCLAIMER,
            "version": __version__, "pacs": cfg.pacs, **context})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request):
        return page(request, "index.html", fields=_form_fields(D()))

    @app.get("/history", response_class=HTMLResponse, include_in_schema=False)
    def history(request: Request, offset: int = Query(0, ge=0)):
        exams = D().store.list_exams(limit=100, offset=offset)
        return page(request, "history.html", exams=exams, offset=offset, total=D().store.count())

    @app.get("/exams/{exam_id}", response_class=HTMLResponse, include_in_schema=False)
    def exam_page(request: Request, exam_id: int):
        exam = D().store.get_exam(exam_id)
        if exam is None:
            return error(404, f"exam {exam_id} not found")
        return page(request, "exam.html", exam=public_exam(exam), svg=D().analyzer.nomogram_svg(exam))

    # ------------------------------------------------------------------------------ live view
    def live_frame():
        d = D()
        if d.grabber is None:
            return None, 0
        return d.grabber.latest()

    @app.get("/live.jpg", summary="Newest frame of the source as JPEG")
    def live_jpg():
        frame, seq = live_frame()
        if frame is None:
            st = D().source_status()
            return error(503, f"no frame from the source yet (state: {st['state']}{': ' + st['error'] if st['error'] else ''})")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(buf.tobytes(), media_type="image/jpeg",
                        headers={"X-Frame-Seq": str(seq), "X-Frame-Size": f"{frame.shape[1]}x{frame.shape[0]}"})

    @app.get("/live.mjpg", summary="The source as an MJPEG stream (≈10 fps)")
    def live_mjpg():
        def frames():
            last = -1
            while True:
                frame, seq = live_frame()
                if frame is not None and seq != last:
                    last = seq
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
                    yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + buf.tobytes() + b"\r\n"
                time.sleep(0.1)
        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")

    @app.get("/api/roi", summary="Automatic image area and testis ROI on the newest frame")
    def auto_roi():
        frame, seq = live_frame()
        if frame is None:
            return error(503, "no frame from the source yet")
        t0 = time.perf_counter()
        area = find_image_area(frame)
        roi = propose_roi(frame, area)
        return {"frame_seq": seq, "frame_size": [frame.shape[1], frame.shape[0]], "image_area": list(area),
                "roi": list(roi), "ms": round((time.perf_counter() - t0) * 1000, 2)}

    # ------------------------------------------------------------------------------ analysis
    @app.post("/api/analyze", summary="Analyse an uploaded image (or the newest live frame)",
              description="multipart: image (PNG/JPEG/DICOM; omit to use the live frame), roi 'x,y,w,h' "
                          "(omit for the automatic ROI), fsh (IU/L), volume_ml (mL) or length_cm/width_cm/"
                          "height_cm (Lambert 0.71), edv (cm/s), patient_id (optional, stored locally only). "
                          "Returns the stored exam; nomogram_probability is null without all clinical values.")
    def analyze(image: UploadFile | None = File(None), roi: str | None = Form(None),
                fsh: str | None = Form(None), volume_ml: str | None = Form(None), edv: str | None = Form(None),
                length_cm: str | None = Form(None), width_cm: str | None = Form(None),
                height_cm: str | None = Form(None), patient_id: str | None = Form(None)):
        d = D()
        try:
            if image is not None and (image.filename or image.size):
                data = image.file.read(max_upload + 1)
                if len(data) > max_upload:
                    d.count("uploads_too_large")
                    return error(413, f"image exceeds the upload limit of {max_upload / 1e6:.1f} MB", "image")
                frame = decode_image_bytes(data, image.filename or "upload")
                trigger, source = "upload", "upload"
            else:
                frame, _ = live_frame()
                if frame is None:
                    raise InputError("image", "no image uploaded and no live frame available from the source")
                trigger, source = "button", d.grabber.source.describe
            box = parse_roi(roi, frame.shape) if roi and roi.strip() else None
            clinical = parse_clinical({"fsh": fsh, "volume_ml": volume_ml, "edv": edv, "length_cm": length_cm,
                                       "width_cm": width_cm, "height_cm": height_cm},
                                      d.analyzer.clinical_ranges())
            pid = (patient_id or "").strip()[:64] or None
        except InputError as exc:
            d.count("analyses_rejected")
            return error(422, str(exc), exc.field)
        except ValueError as exc:  # ROI
            d.count("analyses_rejected")
            return error(422, str(exc), "roi")
        try:
            exam = d.analyzer.analyze(frame, roi=box, clinical=clinical, patient_id=pid, trigger=trigger,
                                      source=source)
        except Exception as exc:
            d.count("analyses_failed")
            log.exception("analysis failed")
            return error(500, f"analysis failed: {type(exc).__name__}: {exc}")
        d.count("analyses_ok")
        return public_exam(exam)

    # ------------------------------------------------------------------------------ exams
    def get_or_404(exam_id: int, with_images: bool = False):
        exam = D().store.get_exam(exam_id, with_images=with_images)
        return exam, (None if exam else error(404, f"exam {exam_id} not found"))

    @app.get("/api/exams", summary="Stored exams, newest first")
    def list_exams(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return {"total": D().store.count(), "exams": [public_exam(e) for e in D().store.list_exams(limit, offset)]}

    @app.get("/api/exams/{exam_id}", summary="One stored exam")
    def get_exam(exam_id: int):
        exam, err = get_or_404(exam_id)
        return err or public_exam(exam)

    @app.get("/api/exams/{exam_id}/nomogram.svg", summary="The nomogram with this exam's values marked")
    def nomogram_svg(exam_id: int):
        exam, err = get_or_404(exam_id)
        if err:
            return err
        svg = D().analyzer.nomogram_svg(exam)
        if svg is None:
            return error(404, "the bundle has no nomogram")
        return Response(svg, media_type="image/svg+xml")

    @app.get("/exams/{exam_id}/{kind}.png", summary="Stored frame, ROI (PNG) or CAM overlay (JPEG)")
    def exam_image(exam_id: int, kind: str):
        from .store import image_media_type

        if kind == "report":
            return export(exam_id, "report.png")
        if kind not in ("frame", "roi", "overlay"):
            return error(404, f"unknown image {kind!r}: frame, roi, overlay or report")
        data = D().store.get_image(exam_id, kind)  # the ROI image is derived from the frame by the store
        return Response(data, media_type=image_media_type(data)) if data else error(404, f"exam {exam_id} not found")

    def export(exam_id: int, what: str):
        from . import export as ex

        exam, err = get_or_404(exam_id, with_images=True)
        if err:
            return err
        exam = export_exam(exam)
        name = f"noa-edge-exam-{exam_id}"
        try:
            if what == "report.png":
                return Response(ex.report_png(exam), media_type="image/png")
            if what == "report.pdf":
                return Response(ex.report_pdf(exam), media_type="application/pdf",
                                headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'})
            ds = ex.secondary_capture(exam) if what == "sc.dcm" else ex.structured_report(exam)
            return Response(ex.to_dicom_bytes(ds), media_type="application/dicom",
                            headers={"Content-Disposition": f'attachment; filename="{name}-{what}"'})
        except ex.ExportError as exc:
            return error(409, str(exc))

    @app.get("/exams/{exam_id}/report.pdf", summary="One-page PDF report")
    def report_pdf(exam_id: int):
        return export(exam_id, "report.pdf")

    @app.get("/exams/{exam_id}/sc.dcm", summary="DICOM Secondary Capture of the report")
    def dicom_sc(exam_id: int):
        return export(exam_id, "sc.dcm")

    @app.get("/exams/{exam_id}/sr.dcm", summary="DICOM Structured Report of the result")
    def dicom_sr(exam_id: int):
        return export(exam_id, "sr.dcm")

    @app.post("/api/exams/{exam_id}/push", summary="C-STORE the exam's SC + SR to the --pacs peer")
    def push(exam_id: int):
        from . import export as ex

        if not cfg.pacs:
            return error(409, "no PACS configured: start the daemon with --pacs AE@host:port")
        exam, err = get_or_404(exam_id, with_images=True)
        if err:
            return err
        try:
            exam = export_exam(exam)
            results = ex.push_to_pacs([ex.secondary_capture(exam), ex.structured_report(exam)], cfg.pacs)
        except ex.PacsError as exc:
            return error(502, str(exc))
        except ex.ExportError as exc:
            return error(409, str(exc))
        return {"pacs": cfg.pacs, "results": results, "ok": all(r["ok"] for r in results)}

    # ------------------------------------------------------------------------------ health
    @app.get("/api/health", summary="Source state, bundle, runtime and delegate")
    def health():
        d = D()
        src = d.source_status()
        return {"status": "ok", "version": __version__, "uptime_s": round(time.time() - d.started, 1),
                "source": src, "bundle": d.analyzer.info(), "runtime": d.analyzer.info()["runtime"],
                "delegate": d.analyzer.info()["runtime"].get("delegate"), "exams": d.store.count(),
                "data_dir": str(d.data_dir), "pacs": cfg.pacs, "resident_memory_bytes": _rss()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics():
        return Response(_metrics_text(D()), media_type="text/plain; version=0.0.4")

    return app


def _rss() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _metrics_text(d: Daemon) -> str:
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
    metric("noa_edge_auth_failures_total", "counter", "Requests with a missing or wrong token", [({}, c["auth_failures"])])
    metric("noa_edge_exams_stored", "gauge", "Exams in the store", [({}, d.store.count())])
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
        metric(f"noa_edge_source_{key}_total", "counter", f"Capture {key.replace('_', ' ')}" + (" (replaced before anyone read them)" if key == "frames_dropped" else ""), [({}, src.get(key, 0))])
    rss = _rss()
    if rss is not None:
        metric("process_resident_memory_bytes", "gauge", "Resident memory of the daemon", [({}, rss)])
    return "\n".join(lines) + "\n"


def _form_fields(d: Daemon) -> list[dict]:
    """The clinical form fields with units and the bundle's plausible ranges."""
    from .pipeline import CLINICAL_FIELDS

    ranges = d.analyzer.clinical_ranges()
    out = []
    for form_name, (source, label, unit, fallback) in CLINICAL_FIELDS.items():
        lo, hi = ranges.get(source, fallback)
        out.append({"name": form_name, "label": label, "unit": unit, "min": lo, "max": hi})
    return out


# ---------------------------------------------------------------------------------- running
def serve(cfg: DaemonConfig, ready: threading.Event | None = None) -> None:
    """Run the daemon in the foreground (blocking) with uvicorn."""
    import uvicorn

    app = create_app(cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if ready is not None:
        threading.Thread(target=_signal_ready, args=(server, ready), daemon=True).start()
    server.run()


def _signal_ready(server, ready: threading.Event) -> None:
    while not server.started:
        time.sleep(0.05)
    ready.set()


def run_demo(host: str = "127.0.0.1", port: int = 8080, data_dir: str | None = None) -> None:
    """`noa-edge demo`: the daemon on the demo bundle and the phantom cine; prints the URL, blocks."""
    import typer

    from .bundle import default_bundle_path

    cfg = DaemonConfig(bundle=str(default_bundle_path()), source="demo", host=host, port=port, data_dir=data_dir)
    try:
        check_config(cfg)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"noa-edge demo: open http://{host}:{port}/  (synthetic demo model — not for diagnosis; Ctrl-C stops)")
    _serve_or_exit(cfg)


def _serve_or_exit(cfg: DaemonConfig) -> None:
    """serve(), with start-up problems (bundle, runtime, store, port) as one clear line, not a traceback."""
    import typer

    try:
        serve(cfg)
    except (ConfigError, OSError, ValueError, RuntimeError) as exc:
        typer.echo(f"error: cannot start the daemon: {exc}", err=True)
        raise typer.Exit(2)


def register(app) -> None:
    import typer

    @app.command("serve")
    def serve_cmd(
        bundle: str = typer.Option(DEFAULT_BUNDLE, help="Firmware bundle directory (manifest.json + models)."),
        source: str = typer.Option("demo", help="demo | video:PATH | v4l2:N | /dev/videoN | rtsp://… | http://… | "
                                                "folder:PATH | dicom:AE_TITLE@PORT | none"),
        host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback needs --token."),
        port: int = typer.Option(8080, help="HTTP port."),
        token: str = typer.Option(None, help="Shared secret required on every request (≥ 8 chars).",
                                  envvar="NOA_EDGE_TOKEN"),
        data_dir: Path = typer.Option(None, help=f"Where exams are kept (default {default_data_dir()})."),
        pacs: str = typer.Option(None, help="PACS for DICOM export, AE@host:port."),
        variant: str = typer.Option("auto", help="Model variant: auto | fp32 | fp16 | int8 | edgetpu."),
        threads: int = typer.Option(None, help="Interpreter threads (default: the runtime's choice)."),
        max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload, MB."),
        no_auto: bool = typer.Option(False, "--no-auto", help="Do not analyse automatically on freeze / new image."),
    ) -> None:
        """Run the edge daemon: capture, ROI, on-device inference, nomogram, local result page."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = DaemonConfig(bundle=bundle, source=None if source in ("", "none") else source, host=host, port=port,
                           token=token, data_dir=str(data_dir) if data_dir else None, pacs=pacs, variant=variant,
                           threads=threads, max_upload_mb=max_upload_mb, auto_analyze=not no_auto)
        try:
            check_config(cfg)
            if cfg.source:
                from .capture import SourceError, open_source

                try:
                    open_source(cfg.source)
                except SourceError as exc:
                    raise ConfigError(f"--source: {exc}") from None
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        shown = host if ":" not in host else f"[{host}]"
        typer.echo(f"noa-edge serve: http://{shown}:{port}/" + ("?token=…" if token else ""))
        _serve_or_exit(cfg)
