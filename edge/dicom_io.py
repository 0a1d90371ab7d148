"""DICOM in: decode ultrasound / secondary-capture objects to RGB frames (the C-STORE SCP that carts
push to is edge/dicom_scp.py), validate their identifiers, parse DICOM addresses.

Frames leave this module as uint8 RGB (H, W, 3), the same pixels a capture card would give, so the rest
of the pipeline does not care where an image came from. Sizes are checked from the header against the
decode limits (edge/decode_limits.py) first, and the daemon decodes only the frame it uses. Patient
identifiers are passed to the caller and are never written to the log.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder

from .decode_limits import check_dimensions
from .errors import EdgeError, InputError
from .preprocess import to_rgb_uint8

log = logging.getLogger("noa_edge.dicom")

# Storage SOP classes a cart sends (retired US classes are still emitted by older carts).
ACCEPTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}

# Transfer syntaxes we offer; each is kept only if a pixel decoder for it is installed here.
CANDIDATE_TRANSFER_SYNTAXES = [
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.RLELossless,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.HTJ2KLossless,
    dicom_uid.HTJ2KLosslessRPCL,
    dicom_uid.HTJ2K,
]


class DicomDecodeError(EdgeError, ValueError):
    """A DICOM object could not be turned into frames; the message names the source and the reason."""


class DicomLimitError(DicomDecodeError):
    """The header announces more pixels per frame or more frames than the decode limits allow."""


class DicomSopClassError(DicomDecodeError):
    """An object of a SOP class the daemon does not analyse (not ultrasound / secondary capture)."""


class DicomConfigError(EdgeError, ValueError):
    """A `dicom:` source or `--pacs` address is malformed."""


def decodable_transfer_syntaxes() -> list[pydicom.uid.UID]:
    """The candidate transfer syntaxes whose pixel data this installation can decode."""
    usable = []
    for ts in CANDIDATE_TRANSFER_SYNTAXES:
        try:
            if get_decoder(ts).is_available:
                usable.append(ts)
        except NotImplementedError:
            continue
    return usable


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_dicom_path(path: str | Path) -> list[np.ndarray]:
    """Frames of a DICOM file on disk (see `decode_dicom_bytes`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DicomDecodeError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return decode_dicom_bytes(data, str(path))


def decode_dicom_bytes(data: bytes, source_name: str) -> list[np.ndarray]:
    """Every uint8 RGB (H, W, 3) frame of a DICOM image object given as bytes (tests, exports; the
    daemon's inputs use `decode_dicom_frame`, which decodes only the frame it uses).

    Raises DicomDecodeError naming `source_name` and the reason (not DICOM, truncated, no pixel data,
    over the decode limits, unsupported transfer syntax or photometric interpretation).
    """
    ds = read_dataset(data, source_name)
    return decode_dataset(ds, source_name)


def decode_dicom_frame(data: bytes, source_name: str, index: int | None = None) -> DicomFrame:
    """One frame of a DICOM image object (default: the middle one), checked against the decode limits
    from the header before any pixel is decoded."""
    ds = read_dataset(data, source_name)
    return decode_dataset_frame(ds, source_name, index)


@dataclass
class DicomFrame:
    frame: np.ndarray     # uint8 RGB (H, W, 3)
    n_frames: int
    index: int


def read_dataset(data: bytes, source_name: str) -> Dataset:
    """Parse DICOM bytes (Part 10 file, or a bare dataset without preamble) into a Dataset."""
    if not data:
        raise DicomDecodeError(f"{source_name}: empty file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds: Dataset = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = _read_without_preamble(data, source_name)
        except (EOFError, OSError) as exc:
            raise DicomDecodeError(f"{source_name}: file is truncated ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage input
            raise DicomDecodeError(f"{source_name}: not a readable DICOM file ({exc})") from None
    if any("end of file" in str(w.message).lower() for w in caught):
        raise DicomDecodeError(f"{source_name}: file is truncated (ends inside an element)")
    return ds


def _read_without_preamble(data: bytes, source_name: str) -> Dataset:
    """Some carts write datasets without the 128-byte preamble and file meta; accept them only when
    what we parse is plainly an image (Rows, Columns and Pixel Data present)."""
    not_dicom = DicomDecodeError(f"{source_name}: not a DICOM file (no 'DICM' header and no image dataset)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - any parse failure: not DICOM
        raise not_dicom from None
    try:
        is_image = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:  # noqa: BLE001 - any failure: not an image dataset
        is_image = False
    if not is_image:
        raise not_dicom
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        ds.file_meta.TransferSyntaxUID = (
            dicom_uid.ImplicitVRLittleEndian if implicit else dicom_uid.ExplicitVRLittleEndian
        )
    return ds


def frame_count(ds: Dataset, source_name: str) -> int:
    """NumberOfFrames (1 when absent), after checking Rows × Columns and the frame count against the
    decode limits (edge.decode_limits): nothing is decoded for an object over them."""
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{source_name}: no pixel data (not an image object, or the file is truncated)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError, AttributeError) as exc:
        raise DicomDecodeError(f"{source_name}: unreadable Rows/Columns/NumberOfFrames ({exc})") from None
    if samples not in (1, 3):
        raise DicomDecodeError(f"{source_name}: {samples} samples per pixel (1 or 3 expected)")
    try:
        check_dimensions(source_name, columns, rows, max(n_frames, 1))
    except InputError as exc:
        raise DicomLimitError(str(exc)) from None
    if n_frames < 1:
        raise DicomDecodeError(f"{source_name}: NumberOfFrames is {n_frames}")
    return n_frames


def _decoder(ds: Dataset, source_name: str):
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise DicomDecodeError(f"{source_name}: no transfer syntax in the file meta information")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomDecodeError(
            f"{source_name}: unsupported transfer syntax {ts} ({ts.name}); "
            f"supported: {', '.join(t.name for t in decodable_transfer_syntaxes())}"
        ) from None
    if not decoder.is_available:
        raise DicomDecodeError(
            f"{source_name}: transfer syntax {ts.name} needs a pixel decoder plugin that is not installed"
        )
    return ts, decoder


def default_frame_index(n_frames: int) -> int:
    """THE frame rule for a multi-frame object, host and device alike: the middle frame (n // 2; frame 0 of a
    single frame). A cine loop starts and ends while the probe is still being placed; its middle is the
    view the sonographer kept (docs/CONTRACTS.md "One decoder")."""
    return n_frames // 2


def decode_dataset_frame(ds: Dataset, source_name: str, index: int | None = None) -> DicomFrame:
    """Frame `index` (default: `default_frame_index`) of a parsed dataset as uint8 RGB; only that frame is
    decoded."""
    n_frames = frame_count(ds, source_name)
    if index is None:
        index = default_frame_index(n_frames)
    if not 0 <= index < n_frames:
        raise DicomDecodeError(f"{source_name}: frame index {index} out of range (the object has {n_frames} "
                               f"frame{'s' if n_frames != 1 else ''}: 0–{n_frames - 1})")
    ts, decoder = _decoder(ds, source_name)
    try:
        arr, meta = decoder.as_array(ds, index=index, as_rgb=True)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types; the reason is kept
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = " | ".join(lines)[:400] if lines else type(exc).__name__
        if "less than expected" in reason:
            reason = "pixel data is shorter than Rows x Columns x frames says (truncated?): " + reason
        raise DicomDecodeError(f"{source_name}: cannot decode pixel data ({ts.name}): {reason}") from None
    photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    samples = int(meta.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)))
    try:
        return DicomFrame(_frame_to_rgb(arr, ds, photometric, samples), n_frames, index)
    except DicomDecodeError as exc:
        raise DicomDecodeError(f"{source_name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any conversion failure is a decode error with its reason
        raise DicomDecodeError(f"{source_name}: cannot convert {photometric} pixels to RGB: {exc}") from None


def decode_dataset(ds: Dataset, source_name: str) -> list[np.ndarray]:
    """Every frame of a parsed dataset, one at a time (bounded by the decode limits)."""
    n_frames = frame_count(ds, source_name)
    return [decode_dataset_frame(ds, source_name, i).frame for i in range(n_frames)]


def _frame_to_rgb(frame: np.ndarray, ds: Dataset, photometric: str, samples: int) -> np.ndarray:
    """One decoded frame -> uint8 RGB, by photometric interpretation."""
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        values = frame
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(apply_modality_lut(frame, ds), ds)
        rgb = to_rgb_uint8(values)  # gray -> RGB, min-max to 8 bits when wider
        return 255 - rgb if photometric == "MONOCHROME1" else rgb
    if photometric == "PALETTE COLOR":
        rgb = _apply_palette(frame, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _scale_to_uint8(rgb, bits)
    if samples == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):
        # as_rgb=True already converted YBR_FULL(_422); YBR_RCT/ICT come out of JPEG 2000 as RGB.
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            raise DicomDecodeError(f"{photometric} pixels were not converted to RGB by the decoder")
        bits = int(ds.get("BitsStored", frame.dtype.itemsize * 8))
        return _scale_to_uint8(frame, bits)
    raise DicomDecodeError(
        f"unsupported photometric interpretation {photometric!r} with {samples} samples per pixel"
    )


def _apply_palette(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR -> RGB through the LUTs, reading 16-bit LUT data in the dataset's byte order.

    pydicom 3.0's apply_color_lut reads (non-segmented) LUT data in the machine's byte order, so a
    big-endian file (e.g. OBXXXX1A_expb, explicit VR big endian) came out near-black: 0x0100 read as 1.
    Segmented LUTs are left to pydicom, which reads those with the right byte order."""
    if "RedPaletteColorLookupTableData" not in ds:
        return apply_color_lut(frame, ds)
    n_entries, first, _bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    n_entries = n_entries or 65536
    little = getattr(ds.file_meta, "TransferSyntaxUID", dicom_uid.ExplicitVRLittleEndian).is_little_endian
    luts = []
    for colour in ("Red", "Green", "Blue"):
        raw = ds[f"{colour}PaletteColorLookupTableData"].value
        width = len(raw) // n_entries
        if width not in (1, 2):
            raise DicomDecodeError(f"{colour} palette LUT holds {len(raw)} bytes for {n_entries} entries")
        dtype = np.dtype("u1") if width == 1 else np.dtype("<u2" if little else ">u2")
        luts.append(np.frombuffer(raw, dtype, count=n_entries).astype(np.uint16))
    index = np.clip(frame.astype(np.int64) - first, 0, n_entries - 1)
    return np.stack([lut[index] for lut in luts], axis=-1)


def _scale_to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    """RGB of `bits` significant bits -> uint8 (no min-max: colour images keep their absolute levels)."""
    if rgb.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(rgb)
    max_value = float(2**bits - 1) if bits > 0 else 255.0
    scaled = np.clip(rgb.astype(np.float64) * (255.0 / max_value), 0, 255)
    return np.ascontiguousarray(np.round(scaled).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Addresses

_AE_TITLE = re.compile(r"^[\x20-\x7e]{1,16}$")


def _check_ae_title(ae_title: str, what: str) -> str:
    ae_title = ae_title.strip()
    if not ae_title or not _AE_TITLE.match(ae_title) or "\\" in ae_title:
        raise DicomConfigError(
            f"{what}: AE title {ae_title!r} must be 1-16 printable ASCII characters without backslash"
        )
    return ae_title


def _check_port(port_text: str, what: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise DicomConfigError(f"{what}: port {port_text!r} must be a number from 1 to 65535")
    return int(port_text)


def parse_dicom_source(source: str) -> tuple[str, int]:
    """'dicom:AE_TITLE@PORT' -> (ae_title, port)."""
    what = f"DICOM source {source!r}"
    if not source.startswith("dicom:"):
        raise DicomConfigError(f"{what}: expected the form dicom:AE_TITLE@PORT, e.g. dicom:NOAEDGE@11112")
    rest = source[len("dicom:") :]
    ae_title, sep, port_text = rest.rpartition("@")
    if not sep:
        raise DicomConfigError(f"{what}: expected the form dicom:AE_TITLE@PORT, e.g. dicom:NOAEDGE@11112")
    return _check_ae_title(ae_title, what), _check_port(port_text, what)


def parse_pacs(pacs: str) -> tuple[str, str, int]:
    """'AE@host:port' -> (ae_title, host, port)."""
    what = f"PACS address {pacs!r}"
    ae_title, sep, hostport = pacs.partition("@")
    host, sep2, port_text = hostport.rpartition(":")
    if not sep or not sep2 or not host:
        raise DicomConfigError(f"{what}: expected the form AE_TITLE@host:port, e.g. PACS@10.0.0.5:104")
    return _check_ae_title(ae_title, what), host.strip("[]"), _check_port(port_text, what)


# ---------------------------------------------------------------------------------------------
# Identifiers

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_uid(value: str) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, no leading zeros in a component, at most 64 chars."""
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def clean_patient_id(value, notes: list[str] | None = None) -> str | None:
    """PatientID (LO, one value) as text safe to store and export: a multi-valued element (a backslash
    in the file) keeps its first non-empty value, not the text of a Python list; control characters are
    removed and the result is cut to 64 characters. What changed goes to `notes` (never the ID itself)."""
    if value is None:
        return None
    values = [str(v) for v in value] if isinstance(value, (list, tuple, MultiValue)) else str(value).split("\\")
    values = [v.strip() for v in values if v.strip()]
    if not values:
        return None
    if len(values) > 1 and notes is not None:
        notes.append(f"PatientID held {len(values)} values (backslash-separated); the first is kept")
    text = _CONTROL.sub("", values[0]).strip()
    if len(text) > 64:
        text = text[:64]
        if notes is not None:
            notes.append("PatientID was longer than 64 characters and was cut")
    return text or None


def dataset_identifiers(ds: Dataset) -> dict:
    """sop_instance_uid, study_instance_uid, sop_class_uid, modality, laterality and patient_id (when present) of a
    dataset, validated before they reach the store and the exports. An invalid UID is replaced by one
    derived from it (the same bad UID always maps to the same new one, so a study's images stay together)
    and `identifier_notes` says so."""
    notes: list[str] = []
    out: dict = {}
    for key, keyword in (("sop_instance_uid", "SOPInstanceUID"), ("study_instance_uid", "StudyInstanceUID")):
        raw = _CONTROL.sub("", str(ds.get(keyword) or "")).strip()
        if not raw:
            out[key] = None
        elif valid_uid(raw):
            out[key] = raw
        else:
            out[key] = str(dicom_uid.generate_uid(entropy_srcs=[raw]))
            notes.append(f"{keyword} was not a valid DICOM UID; replaced by {out[key]}")
    out["sop_class_uid"] = str(ds.get("SOPClassUID", "")) or None
    out["modality"] = _CONTROL.sub("", str(ds.get("Modality", ""))).strip()[:16] or None
    laterality = str(ds.get("ImageLaterality") or ds.get("Laterality") or "").strip().upper()
    out["laterality"] = laterality if laterality in ("L", "R") else None
    patient_id = clean_patient_id(ds.get("PatientID"), notes)
    if patient_id:
        out["patient_id"] = patient_id
    if notes:
        out["identifier_notes"] = notes
    return out


def header_identifiers(data: bytes) -> dict | None:
    """dataset_identifiers of DICOM bytes without reading the pixel data; None when not parseable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=data[128:132] != b"DICM")
        return dataset_identifiers(ds) if "SOPInstanceUID" in ds or "StudyInstanceUID" in ds else None
    except Exception:  # noqa: BLE001 - a header we cannot parse has no identifiers
        return None


def check_sop_class(ds: Dataset, source_name: str) -> None:
    """Only the image classes a cart sends (ACCEPTED_SOP_CLASSES): the SCP negotiates only these, and
    uploads are held to the same list (a CT or a segmentation object is not analysed)."""
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class and sop_class not in ACCEPTED_SOP_CLASSES:
        name = getattr(dicom_uid.UID(sop_class), "name", sop_class)
        raise DicomSopClassError(f"{source_name}: SOP class {name} ({sop_class}) is not an ultrasound or "
                                 "secondary-capture image; accepted: " + ", ".join(ACCEPTED_SOP_CLASSES.values()))
