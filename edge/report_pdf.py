"""The PDF report of one exam: a real text PDF made with fpdf2 (pure Python), not a picture of a page.

Its text is selectable and searchable (`pdftotext` finds the result sentence); the words are those of every
other surface (edge.wording: percentages, the sentence, human labels with units, local time with zone); the
frame with its ROI and the CAM overlay are embedded losslessly; the nomogram with the patient's values is the
daemon's own SVG (edge.nomogram.render_svg) drawn as vector paths and text by fpdf2's SVG renderer.

Fonts: DejaVu Sans when installed (Debian fonts-dejavu-core, in the Makefile's APT_PACKAGES: it has →, ≥, ×);
otherwise fpdf2's built-in Helvetica with the few non-Latin-1 characters spelled out ("->").
"""

from __future__ import annotations

import io
import re

from fpdf import FPDF

from . import __version__
from .exam import Exam
from .export import (
    MANUFACTURER,
    SYNTHETIC,
    UNVERIFIED,
    ExportError,
    _clear_errors,
    _created,
    _png_to_image,
    dejavu_files,
)
from .wording import display, percent, point_label

FAMILY = "noasans"  # the one family name the page text and the nomogram SVG are drawn with
_LATIN1 = {"→": "->", "≥": ">=", "≤": "<=", "×": "x", "–": "-", "—": "-", "…": "...", "·": "*", "−": "-"}

PAGE_W, MARGIN = 210.0, 14.0
TEXT_W = PAGE_W - 2 * MARGIN


class _Report(FPDF):
    def __init__(self, footer_text: str):
        super().__init__(format="A4", unit="mm")
        self.footer_text = footer_text
        fonts = dejavu_files()
        self.unicode = fonts is not None
        if fonts:
            self.add_font(FAMILY, "", str(fonts[0]))
            self.add_font(FAMILY, "B", str(fonts[1]))
        self.family = FAMILY if fonts else "helvetica"
        self.set_margins(MARGIN, 12, MARGIN)
        self.set_auto_page_break(True, margin=22)

    def t(self, text) -> str:
        """Text this font can draw."""
        text = str(text)
        if self.unicode:
            return text
        for a, b in _LATIN1.items():
            text = text.replace(a, b)
        return text.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False, color=(0, 0, 0)) -> None:
        self.set_font(self.family, "B" if bold else "", size)
        self.set_text_color(*color)

    def para(self, text, size: float = 10, bold: bool = False, color=(0, 0, 0), h: float | None = None) -> None:
        self.font(size, bold, color)
        self.multi_cell(TEXT_W, h or size * 0.5, self.t(text), align="L", new_x="LMARGIN", new_y="NEXT")

    def rows(self, rows: list[tuple[str, str]], key_w: float = 58, size: float = 9.5) -> None:
        for key, value in rows:
            self.font(size, color=(70, 70, 70))
            self.cell(key_w, size * 0.52, self.t(key))
            self.font(size)
            self.multi_cell(TEXT_W - key_w, size * 0.52, self.t(value), align="L", new_x="LMARGIN", new_y="NEXT")

    def banner(self, text: str, fill, color) -> None:
        self.set_fill_color(*fill)
        self.font(10.5, True, color)
        self.cell(TEXT_W, 8, self.t(text), fill=True, align="C", new_x="LMARGIN", new_y="NEXT")
        self.ln(1.5)

    def footer(self) -> None:
        self.set_y(-18)
        self.set_draw_color(150, 150, 150)
        self.line(MARGIN, self.get_y(), PAGE_W - MARGIN, self.get_y())
        self.font(7.5, color=(90, 90, 90))
        self.multi_cell(TEXT_W, 3.6, self.t(self.footer_text + f"  Page {self.page_no()}/{{nb}}"),
                        align="L", new_x="LMARGIN", new_y="NEXT")


def _svg_for(pdf: _Report, svg: str) -> bytes:
    """The nomogram SVG drawn with the report's font (its text stays text)."""
    svg = re.sub(r'font-family="[^"]*"', f'font-family="{pdf.family}"', svg, count=1)
    return pdf.t(svg).encode("utf-8")


@_clear_errors
def report_pdf(exam: Exam, nomogram_svg: str | None = None) -> bytes:
    """The exam's report as PDF bytes. `nomogram_svg`: the nomogram with this exam's values
    (Analyzer.nomogram_svg), drawn when given and the exam has a nomogram result."""
    exam_id = exam.get("id")
    _created(exam)  # a malformed time is an ExportError, as for the other exports
    frame = _png_to_image(exam.get("frame_png"), "frame_png", exam_id)
    overlay = _png_to_image(exam.get("overlay_png"), "overlay_png", exam_id)
    bundle = exam.get("bundle") or {}
    synthetic = bool(bundle.get("synthetic_demo"))
    words = display(exam)
    foot = (f"{UNVERIFIED}." + (f" {SYNTHETIC}." if synthetic else "")
            + " Research software; the result must be confirmed by a physician.")
    pdf = _Report(foot)
    pdf.set_title(f"noa-edge exam {exam_id}")
    pdf.set_author(MANUFACTURER)
    pdf.set_subject(UNVERIFIED)
    pdf.set_creator(f"noa-edge {__version__} (fpdf2)")
    pdf.add_page()

    pdf.para("noa-edge — testicular ultrasound: NOA vs OA", 16, True)
    side = {"L": "Left testis", "R": "Right testis"}.get(str(exam.get("side") or ""), "")
    who = "   ".join(x for x in (f"Exam {exam_id}", words["created_local"],
                                  f"Patient {exam['patient_id']}" if exam.get("patient_id") else "", side) if x)
    pdf.para(who, 9.5, color=(60, 60, 60))
    pdf.ln(2)
    if synthetic:
        pdf.banner(SYNTHETIC.upper(), (198, 40, 40), (255, 255, 255))
    pdf.banner(UNVERIFIED.upper(), (255, 236, 179), (120, 70, 0))

    label = str(exam.get("label", "-"))
    if words.get("ood"):  # an image unlike the training data: the warning first, the label not as a result
        pdf.banner(words["ood_text"].upper(), (106, 27, 154), (255, 255, 255))
        pdf.para(words["ood_detail"], 8.5, color=(60, 60, 60), h=4.2)
        pdf.para(f"Result: {label} (not reliable)", 15, True, (110, 110, 110), h=8)
    else:
        pdf.para(f"Result: {label}", 15, True, (150, 0, 0) if label == "NOA" else (0, 90, 0), h=8)
    pdf.para(words["sentence"], 11.5, True, h=6)
    pdf.para(words["threshold_explanation"], 8.5, color=(60, 60, 60), h=4.2)
    for note in exam.get("notes") or []:
        pdf.para(f"Note: {note}", 8.5, color=(60, 60, 60), h=4.2)
    pdf.ln(2)

    # The frame with the ROI used (drawn on exactly those pixels) and the CAM overlay on that ROI.
    box_w, box_h, gap = (TEXT_W - 6) / 2, 48.0, 6.0
    y0 = pdf.get_y()
    scale = min(box_w / frame.width, box_h / frame.height)
    fw, fh = frame.width * scale, frame.height * scale
    pdf.image(frame, x=MARGIN, y=y0, w=fw, h=fh)
    roi = exam.get("roi")
    if roi:
        x, y, w, h = (float(v) for v in roi)
        pdf.set_draw_color(255, 190, 0)
        pdf.set_line_width(0.6)
        pdf.rect(MARGIN + x * scale, y0 + y * scale, w * scale, h * scale)
        pdf.set_line_width(0.2)
    oscale = min(box_w / overlay.width, box_h / overlay.height)
    pdf.image(overlay, x=MARGIN + box_w + gap, y=y0, w=overlay.width * oscale, h=overlay.height * oscale)
    pdf.set_y(y0 + max(fh, overlay.height * oscale) + 1.5)
    pdf.font(8, color=(60, 60, 60))
    roi_text = "-" if not roi else f"{','.join(str(int(v)) for v in roi)} px ({exam.get('roi_method', 'auto')})"
    pdf.cell(box_w + gap, 4, pdf.t(f"Frame and ROI x,y,w,h = {roi_text}"))
    pdf.cell(box_w, 4, pdf.t("Class activation map on the ROI (red = most influence)"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)

    rows = [(f"Image model probability of {exam.get('labels', {}).get('positive', 'NOA')}",
             words["dl_probability_text"])]
    nomo = exam.get("nomogram_probability")
    rows.append(("Nomogram probability", percent(nomo) if nomo is not None
                 else "not computed: clinical values missing, image model alone"))
    rows.append(("Basis of the result", words["basis_text"]))
    rows += [(r["label"] + (f" ({r['unit']})" if r["unit"] else ""), r["value_text"]) for r in words["inputs"]]
    pdf.rows(rows)
    points = [(point_label(k), f"{float(v):.1f}") for k, v in (exam.get("points") or {}).items() if v is not None]
    if points:
        total = sum(float(v) for v in (exam.get("points") or {}).values() if v is not None)
        pdf.ln(1)
        pdf.rows([("Nomogram points", ", ".join(f"{k} {v}" for k, v in points) + f"; total {total:.1f}")])

    if nomogram_svg and nomo is not None:  # a DL-only exam has no values to mark on it
        pdf.ln(2)
        width = 150.0  # mm: the SVG's 11 px text prints at ~6.5 pt
        m = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', nomogram_svg)
        height = width * float(m.group(2)) / float(m.group(1)) if m else width * 0.5
        if pdf.will_page_break(height + 6):
            pdf.add_page()
        pdf.para("Nomogram (this patient's values in red)", 10, True)
        pdf.set_fill_color(0, 0, 0)  # the SVG's unfilled text and shapes inherit the page's colours
        pdf.set_draw_color(0, 0, 0)
        pdf.set_text_color(0, 0, 0)
        pdf.image(io.BytesIO(_svg_for(pdf, nomogram_svg)), x=MARGIN, y=pdf.get_y(), w=width, h=height)
        pdf.set_y(pdf.get_y() + height + 1)

    pdf.ln(2)
    timings = exam.get("timings") or {}
    pdf.rows([
        ("Model bundle", f"{bundle.get('name', '-')}" + (" (synthetic demo)" if synthetic else "")
         + f", analysed by noa-edge {__version__}"),
        ("Bundle sha256", str(bundle.get("sha256", "-"))),
        ("Frame sha256", str(exam.get("frame_sha256") or "-")),
        ("Timings (ms)", ", ".join(f"{k} {float(v):.1f}" for k, v in timings.items()) or "-"),
    ], key_w=32, size=7.5)
    try:
        return bytes(pdf.output())
    except Exception as exc:  # noqa: BLE001 - fpdf2 refusing an image or a glyph: a clear export error, not a 500
        raise ExportError(f"exam {exam_id}: the PDF could not be written ({type(exc).__name__}: {exc})") from None


__all__ = ["report_pdf"]
