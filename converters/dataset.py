"""Dataset directory: load and validate (the `noa-edge validate` command is in converters/cli.py).

A clinic's export and the phantom cohort share one format (docs/DATASET.md, docs/CONTRACTS.md).
Validation collects every problem it finds instead of stopping at the first, so a clinic's IT person
can fix a whole export in one pass. Every problem names file, row, column and reason. Rows are the
line numbers a spreadsheet or editor shows: the header is line 1, the first data row is line 2.

Errors raise `DatasetError`; warnings (volume that disagrees with L·W·H, a patient without images)
are returned on `Dataset.warnings`, because clinics measure some things separately and legitimately.

Images are checked fast, from their headers (PNG IHDR, JPEG SOF, DICOM Rows/Columns) plus a cheap
end-of-file check for truncation (converters/image_files.py); pixels are decoded only when `read_image`
is called.
Over 450 lines: one validator for the three files of a dataset, sharing one problem collector, so every
check a clinic's export goes through is read in one place.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

import numpy as np

from converters.errors import ConvertersError
from converters.image_files import ImageProblem, image_format, image_size, read_image_file  # noqa: F401 (re-exported)
from edge.clinical import VARIABLES

DATASET_JSON = "dataset.json"
PATIENTS_CSV = "patients.csv"
IMAGES_CSV = "images.csv"

GROUPS = ("OA", "NOA", "control")
SIDES = ("L", "R")
SOURCE_KINDS = ("clinic", "phantom")
VOLUME_FORMULAS = {"lambert_0.71": 0.71, "ellipsoid_0.52": 0.52}
DEFAULT_VOLUME_FORMULA = "lambert_0.71"
VOLUME_TOLERANCE = 0.25  # relative difference between volume_ml and k·L·W·H that triggers a warning

PATIENT_COLUMNS = ("patient_id", "group", "age", "fsh", "lh", "testosterone", "inhibin_b")
IMAGE_COLUMNS = ("image_id", "patient_id", "side", "file", "roi_x", "roi_y", "roi_w", "roi_h",
                 "length_cm", "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri")
ROI_COLUMNS = ("roi_x", "roi_y", "roi_w", "roi_h")

# Plausible ranges (inclusive): column -> (low, high, unit, hint shown when a value is outside), from the
# one clinical variable table the device uses too (edge.clinical.VARIABLES).
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str, str]] = {
    name: (v.range[0], v.range[1], v.unit, v.hint) for name, v in VARIABLES.items()}
PATIENT_NUMERIC = ("age", "fsh", "lh", "testosterone", "inhibin_b")
IMAGE_NUMERIC = ("length_cm", "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri")

MAX_PROBLEMS_IN_MESSAGE = 30


# --------------------------------------------------------------------------------------------
# Problems and the error


@dataclass(frozen=True)
class Problem:
    """One finding: `file:row: column: reason`. row is the file's line number (header = 1)."""

    file: str
    row: int | None
    column: str | None
    reason: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "column": self.column, "reason": self.reason,
                "severity": self.severity}


def format_problems(problems: list[Problem], limit: int) -> str:
    """One line per problem, at most `limit` of them, then "... and N more"."""
    lines = [str(p) for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


class DatasetError(ConvertersError, ValueError):
    """The dataset has errors. `.problems` lists all of them; `.warnings` the warnings found too."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None,
                 root: Path | str | None = None):
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        self.root = root
        where = f" in {root}" if root is not None else ""
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''}{where}:\n"
                         + format_problems(self.problems, MAX_PROBLEMS_IN_MESSAGE))


class _Findings:
    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, file: str, row: int | None, column: str | None, reason: str) -> None:
        self.errors.append(Problem(file, row, column, reason, "error"))

    def warn(self, file: str, row: int | None, column: str | None, reason: str) -> None:
        self.warnings.append(Problem(file, row, column, reason, "warning"))


# --------------------------------------------------------------------------------------------
# The dataset


@dataclass
class Dataset:
    root: Path
    meta: dict                      # dataset.json
    patients: list[dict]            # typed: str ids/group, float or None for numeric cells
    images: list[dict]              # typed; roi as tuple (x, y, w, h) of ints under key "roi"
    warnings: list[Problem] = field(default_factory=list)
    _by_patient_id: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._by_patient_id = {p["patient_id"]: p for p in self.patients}

    @property
    def volume_formula(self) -> str:
        return self.meta.get("volume_formula", DEFAULT_VOLUME_FORMULA)

    def patient(self, patient_id: str) -> dict:
        try:
            return self._by_patient_id[patient_id]
        except KeyError:
            raise KeyError(f"no patient {patient_id!r} in {self.root / PATIENTS_CSV}") from None

    def image_path(self, image_row: dict) -> Path:
        return self.root / image_row["file"]

    def read_image(self, image_row: dict) -> np.ndarray:
        """Decode the image file as uint8 RGB (H, W, 3), in the pixel grid the ROI refers to."""
        path = self.image_path(image_row)
        try:
            return read_image_file(path)
        except Exception as exc:  # decoder errors come in many types; name the file
            raise DatasetError([Problem(IMAGES_CSV, None, "file",
                                        f"{image_row['file']}: cannot decode: {exc}")],
                               root=self.root) from exc

    def labelled_images(self, include_controls: bool = False) -> list[dict]:
        """Images joined with their patient's fields, plus "label": 1 NOA, 0 OA (controls 0)."""
        out = []
        for image in self.images:
            patient = self._by_patient_id[image["patient_id"]]
            if patient["group"] == "control" and not include_controls:
                continue
            out.append({**patient, **image, "label": 1 if patient["group"] == "NOA" else 0})
        return out

    def missing_counts(self) -> dict[str, dict[str, int]]:
        """file -> column -> number of empty cells (numeric columns only; the rest are required)."""
        return {
            PATIENTS_CSV: {c: sum(p[c] is None for p in self.patients) for c in PATIENT_NUMERIC},
            IMAGES_CSV: {c: sum(i[c] is None for i in self.images) for c in IMAGE_NUMERIC},
        }

    def summary(self) -> dict:
        """Counts per group and missingness per column, as printed by `noa-edge validate`."""
        groups = {}
        for g in GROUPS:
            ids = {p["patient_id"] for p in self.patients if p["group"] == g}
            groups[g] = {"patients": len(ids),
                         "images": sum(i["patient_id"] in ids for i in self.images)}
        totals = {PATIENTS_CSV: len(self.patients), IMAGES_CSV: len(self.images)}
        missing = {
            f: {c: {"missing": n, "percent": round(100.0 * n / totals[f], 1) if totals[f] else 0.0}
                for c, n in cols.items()}
            for f, cols in self.missing_counts().items()
        }
        return {"root": str(self.root), "name": self.meta.get("name"),
                "source_kind": (self.meta.get("source") or {}).get("kind"),
                "volume_formula": self.volume_formula,
                "groups": groups, "patients": len(self.patients), "images": len(self.images),
                "missing": missing}


# --------------------------------------------------------------------------------------------
# Loading and validation


def load_dataset(path: str | Path, check_images: bool = True) -> Dataset:
    """Load and validate a dataset directory. Raises DatasetError listing every error found.

    check_images=False skips opening image files (existence, format, size, ROI inside image), e.g.
    to check the CSVs before the images are copied.
    """
    root = Path(path)
    findings = _Findings()
    if not root.is_dir():
        findings.error(str(root), None, None, "not a directory" if root.exists() else "does not exist")
        raise DatasetError(findings.errors, root=root)

    meta = _validate_meta(root, findings)
    volume_k = VOLUME_FORMULAS.get(meta.get("volume_formula", DEFAULT_VOLUME_FORMULA))
    patients, patient_lines = _load_patients(root, findings)
    images = _load_images(root, findings, patient_lines, volume_k, check_images)

    if findings.errors:  # dataset-wide warnings only make sense once every row is valid
        raise DatasetError(findings.errors, findings.warnings, root=root)
    with_images = {i["patient_id"] for i in images}
    for p in patients:
        if p["patient_id"] not in with_images:
            findings.warn(PATIENTS_CSV, patient_lines[p["patient_id"]], "patient_id",
                          f"patient {p['patient_id']!r} has no images")
    present = {p["group"] for p in patients}
    if patients:
        for g in ("OA", "NOA"):
            if g not in present:
                findings.warn(PATIENTS_CSV, None, "group",
                              f"no {g} patients: a NOA-vs-OA model needs both")
    return Dataset(root=root, meta=meta, patients=patients, images=images,
                   warnings=findings.warnings)


def _validate_meta(root: Path, findings: _Findings) -> dict:
    path = root / DATASET_JSON
    if not path.is_file():
        findings.error(DATASET_JSON, None, None, "missing (every dataset needs a dataset.json)")
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        findings.error(DATASET_JSON, exc.lineno, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        findings.error(DATASET_JSON, None, None, f"cannot read: {exc}")
        return {}
    if not isinstance(meta, dict):
        findings.error(DATASET_JSON, None, None, "must be a JSON object {...}")
        return {}

    f = DATASET_JSON
    name = meta.get("name")
    if not isinstance(name, str) or not name.strip():
        findings.error(f, None, "name", "missing or not a non-empty string")
    source = meta.get("source")
    if not isinstance(source, dict):
        findings.error(f, None, "source", 'missing or not an object like {"kind": "clinic"}')
    elif source.get("kind") not in SOURCE_KINDS:
        findings.error(f, None, "source.kind",
                       f"{source.get('kind')!r} is not one of {', '.join(SOURCE_KINDS)}")
    if meta.get("positive_class") != "NOA":
        findings.error(f, None, "positive_class", f"{meta.get('positive_class')!r}: must be \"NOA\"")
    created = meta.get("created")
    if not isinstance(created, str) or _parse_iso8601(created) is None:
        findings.error(f, None, "created",
                       f"{created!r} is not an ISO-8601 date/time such as 2024-05-01T09:30:00Z")
    if "volume_formula" in meta and meta["volume_formula"] not in VOLUME_FORMULAS:
        findings.error(f, None, "volume_formula",
                       f"{meta['volume_formula']!r} is not one of {', '.join(VOLUME_FORMULAS)}")
    return meta


def _parse_iso8601(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return None


def _read_csv(root: Path, name: str, expected: tuple[str, ...], findings: _Findings):
    """Yield (line, {column: stripped cell}) for each data row; header problems go to findings.

    Missing columns are reported once and their cells read as None, so the rest is still checked.
    Returns None when the file cannot be read at all or lacks its id column.
    """
    path = root / name
    if not path.is_file():
        findings.error(name, None, None, "missing")
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except UnicodeDecodeError as exc:
        findings.error(name, None, None, f"not UTF-8 text (byte {exc.start}); save as CSV UTF-8")
        return None
    except OSError as exc:
        findings.error(name, None, None, f"cannot read: {exc}")
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or not any(c.strip() for c in header):
        findings.error(name, 1, None, "empty file: the first line must be the header "
                       + ", ".join(expected))
        return None
    header = [c.strip() for c in header]
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "';'" if ";" in header[0] else "tab"
        findings.error(name, 1, None, f"columns are separated by {sep}; save as comma-separated CSV")
        return None

    seen = set()
    for col in header:
        if col in seen:
            findings.error(name, 1, col, "duplicate column")
        seen.add(col)
        if col not in expected:
            guess = difflib.get_close_matches(col.lower(), expected, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            findings.error(name, 1, col or "(empty)",
                           f"unknown column{hint}; expected columns: {', '.join(expected)}")
    for col in expected:
        if col not in seen:
            findings.error(name, 1, col, "missing column")
    if expected[0] not in seen:
        return None

    rows = []
    for cells in reader:
        if not cells or not any(c.strip() for c in cells):
            continue  # blank line
        line = reader.line_num
        if len(cells) != len(header):
            findings.error(name, line, None, f"row has {len(cells)} cells but the header has "
                           f"{len(header)} (a stray or missing comma?)")
            first = cells[header.index(expected[0])].strip() if len(cells) > header.index(expected[0]) else ""
            rows.append((line, {expected[0]: first}, False))
            continue
        row = {col: cell.strip() for col, cell in zip(header, cells, strict=False)}
        # an absent column reads as None: reported once above, not again on every row
        rows.append((line, {col: row.get(col) for col in expected}, True))
    return rows


def _parse_number(name: str, line: int, col: str, cell: str | None, findings: _Findings) -> float | None:
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        if re.fullmatch(r"[-+]?\d+,\d+", cell):
            hint = "use '.' as the decimal separator"
        else:
            hint = "write a number, or leave the cell empty if unknown"
        findings.error(name, line, col, f"{cell!r} is not a number ({hint})")
        return None
    if not math.isfinite(value):
        findings.error(name, line, col, f"{cell!r} is not a finite number")
        return None
    lo, hi, unit, hint = PLAUSIBLE_RANGES[col]
    if not lo <= value <= hi:
        unit_txt = f" {unit}" if unit else ""
        findings.error(name, line, col, f"{cell} is outside the plausible range {lo:g}-{hi:g}{unit_txt}"
                       + (f" ({hint})" if hint else ""))
        return None
    return value


def _load_patients(root: Path, findings: _Findings) -> tuple[list[dict], dict[str, int]]:
    rows = _read_csv(root, PATIENTS_CSV, PATIENT_COLUMNS, findings)
    patients: list[dict] = []
    lines: dict[str, int] = {}  # patient_id -> line, also for rows that had errors
    if rows is None:
        return patients, lines
    name = PATIENTS_CSV
    for line, row, complete in rows:
        pid = row["patient_id"]
        if pid == "":
            findings.error(name, line, "patient_id", "empty")
        elif pid in lines:
            findings.error(name, line, "patient_id", f"duplicate {pid!r} (first on line {lines[pid]})")
            continue
        else:
            lines[pid] = line
        if not complete:
            continue
        ok = pid != ""
        group = row["group"]
        if group is None:
            ok = False
        elif group not in GROUPS:
            ok = False
            match = [g for g in GROUPS if g.lower() == group.lower()]
            hint = f" (write {match[0]!r})" if match else ""
            findings.error(name, line, "group", f"{group!r} is not one of {', '.join(GROUPS)}{hint}"
                           if group else f"empty (must be one of {', '.join(GROUPS)})")
        n_errors = len(findings.errors)
        values = {c: _parse_number(name, line, c, row[c], findings) for c in PATIENT_NUMERIC}
        if ok and len(findings.errors) == n_errors:
            patients.append({"patient_id": pid, "group": group, **values})
    if not rows:
        findings.error(name, None, None, "no patient rows")
    return patients, lines


def _parse_pixels(name: str, line: int, col: str, cell: str | None, findings: _Findings) -> int | None:
    if cell is None:
        return None
    if cell == "":
        findings.error(name, line, col, "empty (every image needs its ROI in pixels)")
        return None
    try:
        value = float(cell)
    except ValueError:
        findings.error(name, line, col, f"{cell!r} is not a whole number of pixels")
        return None
    if not math.isfinite(value) or not value.is_integer():
        findings.error(name, line, col, f"{cell!r} is not a whole number of pixels")
        return None
    return int(value)


def _load_images(root: Path, findings: _Findings, patient_lines: dict[str, int],
                 volume_k: float | None, check_images: bool) -> list[dict]:
    rows = _read_csv(root, IMAGES_CSV, IMAGE_COLUMNS, findings)
    images: list[dict] = []
    if rows is None:
        return images
    name = IMAGES_CSV
    first_line: dict[str, int] = {}
    sizes: dict[str, tuple[int, int] | str] = {}  # file -> (width, height) or error reason
    for line, row, complete in rows:
        n_errors = len(findings.errors)
        iid = row["image_id"]
        if iid == "":
            findings.error(name, line, "image_id", "empty")
        elif iid in first_line:
            findings.error(name, line, "image_id", f"duplicate {iid!r} (first on line {first_line[iid]})")
        else:
            first_line[iid] = line
        if not complete:
            continue
        pid = row["patient_id"]
        if pid == "":
            findings.error(name, line, "patient_id", "empty")
        elif pid is not None and patient_lines and pid not in patient_lines:
            findings.error(name, line, "patient_id", f"unknown patient {pid!r} (not in {PATIENTS_CSV})")
        side = row["side"]
        if side is not None and side not in SIDES:
            findings.error(name, line, "side", f"{side!r} is not L or R" if side else "empty (L or R)")
        file = row["file"]
        file_ok = _check_relative_path(name, line, file, findings)

        roi = tuple(_parse_pixels(name, line, c, row[c], findings) for c in ROI_COLUMNS)
        roi_ok = all(v is not None for v in roi)
        if roi_ok:
            x, y, w, h = roi
            if w <= 0 or h <= 0:
                findings.error(name, line, "roi_w" if w <= 0 else "roi_h",
                               f"ROI is empty: width {w}, height {h} (must be > 0)")
                roi_ok = False
            elif x < 0 or y < 0:
                findings.error(name, line, "roi_x" if x < 0 else "roi_y",
                               f"ROI starts outside the image at x={x}, y={y} (must be >= 0)")
                roi_ok = False

        if check_images and file_ok:
            if file not in sizes:
                sizes[file] = _image_size_or_reason(root / file)
            size = sizes[file]
            if isinstance(size, str):
                findings.error(name, line, "file", f"{file}: {size}")
            elif roi_ok:
                width, height = size
                x, y, w, h = roi
                if x + w > width or y + h > height:
                    findings.error(name, line, "roi_x" if x + w > width else "roi_y",
                                   f"ROI x={x}, y={y}, w={w}, h={h} reaches ({x + w}, {y + h}), "
                                   f"outside the {width}x{height} image {file}")

        values = {c: _parse_number(name, line, c, row[c], findings) for c in IMAGE_NUMERIC}
        _check_consistency(name, line, values, volume_k, findings)
        if len(findings.errors) == n_errors:
            images.append({"image_id": iid, "patient_id": pid, "side": side, "file": file,
                           **dict(zip(ROI_COLUMNS, roi, strict=False)), "roi": roi, **values})
    if not rows:
        findings.error(name, None, None, "no image rows")
    return images


def _check_relative_path(name: str, line: int, file: str | None, findings: _Findings) -> bool:
    if file is None:
        return False
    if file == "":
        findings.error(name, line, "file", "empty (path of the image, relative to the dataset folder)")
        return False
    if "\\" in file:
        findings.error(name, line, "file", f"{file!r}: use '/' as the path separator")
        return False
    p = PurePosixPath(file)
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", file):
        findings.error(name, line, "file", f"{file!r} must be a relative path inside the dataset folder")
        return False
    return True


def _check_consistency(name: str, line: int, v: dict, volume_k: float | None,
                       findings: _Findings) -> None:
    dims = (v["length_cm"], v["width_cm"], v["height_cm"])
    if volume_k and v["volume_ml"] is not None and all(d is not None for d in dims):
        lwh = dims[0] * dims[1] * dims[2]
        expected = volume_k * lwh
        diff = abs(v["volume_ml"] - expected) / expected
        if diff > VOLUME_TOLERANCE:
            other = [f for f, k in VOLUME_FORMULAS.items()
                     if k != volume_k and abs(v["volume_ml"] - k * lwh) <= 0.05 * k * lwh]
            hint = f"; it matches {other[0]}: check volume_formula in {DATASET_JSON}" if other else ""
            findings.warn(name, line, "volume_ml",
                          f"{v['volume_ml']:g} mL differs by {100 * diff:.0f}% from "
                          f"{volume_k:g}*L*W*H = {expected:.1f} mL{hint}")
    if v["psv_cm_s"] is not None and v["edv_cm_s"] is not None and v["edv_cm_s"] > v["psv_cm_s"]:
        findings.warn(name, line, "edv_cm_s",
                      f"EDV {v['edv_cm_s']:g} cm/s is above PSV {v['psv_cm_s']:g} cm/s (swapped?)")


def _image_size_or_reason(path: Path) -> tuple[int, int] | str:
    try:
        if not path.exists():
            return "file not found"
        if not path.is_file():
            return "not a file"
        if path.stat().st_size == 0:
            return "empty file"
        return image_size(path)
    except ImageProblem as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 - a broken file must become a problem, never a traceback
        return f"unreadable ({type(exc).__name__}: {exc})"
