"""DICOM in: decode ultrasound / secondary-capture objects to RGB frames, and a C-STORE SCP for carts
that push their images instead of showing them on a screen we could capture.

Frames leave this module as uint8 RGB (H, W, 3), the same pixels a capture card would give, so the rest
of the pipeline does not care where an image came from. Patient identifiers are passed to the caller
in `info` and are never written to the log.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom import uid as dicom_uid

from edge.preprocess import to_rgb_uint8
from edge.errors import EdgeError

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
    """uint8 RGB (H, W, 3) frames of a DICOM image object given as bytes.

    Raises DicomDecodeError naming `source_name` and the reason (not DICOM, truncated, no pixel data,
    unsupported transfer syntax or photometric interpretation).
    """
    ds = read_dataset(data, source_name)
    return decode_dataset(ds, source_name)


def read_dataset(data: bytes, source_name: str) -> Dataset:
    """Parse DICOM bytes (Part 10 file, or a bare dataset without preamble) into a Dataset."""
    if not data:
        raise DicomDecodeError(f"{source_name}: empty file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = _read_without_preamble(data, source_name)
        except (EOFError, OSError) as exc:
            raise DicomDecodeError(f"{source_name}: file is truncated ({exc})") from None
        except Exception as exc:  # pydicom raises many types on garbage input
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
    except Exception:
        raise not_dicom from None
    try:
        is_image = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:
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


def decode_dataset(ds: Dataset, source_name: str) -> list[np.ndarray]:
    """uint8 RGB frames of an already parsed dataset (used by the SCP, which receives Datasets)."""
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{source_name}: no pixel data (not an image object, or the file is truncated)")
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
    try:
        arr, meta = decoder.as_array(ds, as_rgb=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = " | ".join(lines)[:400] if lines else type(exc).__name__
        if "less than expected" in reason:
            reason = "pixel data is shorter than Rows x Columns x frames says (truncated?): " + reason
        raise DicomDecodeError(f"{source_name}: cannot decode pixel data ({ts.name}): {reason}") from None

    photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    samples = int(meta.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)))
    n_frames = int(meta.get("number_of_frames", 1) or 1)
    frames = list(arr) if n_frames > 1 else [arr]
    try:
        return [_frame_to_rgb(f, ds, photometric, samples) for f in frames]
    except DicomDecodeError as exc:
        raise DicomDecodeError(f"{source_name}: {exc}") from None
    except Exception as exc:
        raise DicomDecodeError(f"{source_name}: cannot convert {photometric} pixels to RGB: {exc}") from None


def _frame_to_rgb(frame: np.ndarray, ds: Dataset, photometric: str, samples: int) -> np.ndarray:
    """One decoded frame -> uint8 RGB, by photometric interpretation."""
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        values = frame
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(apply_modality_lut(frame, ds), ds)
        rgb = to_rgb_uint8(values)  # gray -> RGB, min-max to 8 bits when wider
        return 255 - rgb if photometric == "MONOCHROME1" else rgb
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
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
# C-STORE SCP

# Failure statuses (PS3.4 Annex B.2.3): 0xC000-0xCFFF "cannot understand", 0xA700 out of resources.
STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_PROCESSING_FAILED = 0xC001


class DicomStoreSCP:
    """C-STORE SCP: each received US / SC image is decoded and handed to `on_frames(frames, info)`.

    `info` = {"sop_instance_uid", "sop_class_uid", "modality", "calling_ae", "study_instance_uid",
    "transfer_syntax", "patient_id" (only if present)}. A bad object answers a failure status with the
    reason in the log (no patient data) and the server keeps serving. `on_frames` runs in the
    association's thread (one per connected cart) and the cart waits for it, so keep it short and
    thread-safe; an exception in it answers the cart 0xC001.
    """

    def __init__(
        self,
        ae_title: str,
        port: int,
        on_frames: Callable[[list[np.ndarray], dict], None],
        host: str = "127.0.0.1",
    ):
        self.ae_title = _check_ae_title(ae_title, "DICOM SCP")
        self.port = int(port)
        self.host = host
        self.on_frames = on_frames
        self.transfer_syntaxes = decodable_transfer_syntaxes()
        self._server = None
        self._lock = threading.Lock()
        self.received = 0
        self.failed = 0

    def start(self) -> "DicomStoreSCP":
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.ae_title)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        # A C-ECHO lets cart engineers test the link before sending images.
        ae.add_supported_context("1.2.840.10008.1.1", [dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian])
        ae.maximum_pdu_size = 0  # no limit
        try:
            self._server = ae.start_server(
                (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._handle_store)]
            )
        except OSError as exc:
            raise DicomConfigError(f"DICOM SCP cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None
        log.info("DICOM SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("DICOM SCP %s stopped", self.ae_title)

    def __enter__(self) -> "DicomStoreSCP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _failure(self, status: int, reason: str) -> Dataset:
        with self._lock:
            self.failed += 1
        response = Dataset()
        response.Status = status
        response.ErrorComment = reason[:64]  # LO, 64 chars
        return response

    def _handle_store(self, event) -> Dataset | int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        sop_instance = str(event.request.AffectedSOPInstanceUID)
        source_name = f"C-STORE from {calling_ae} (SOP instance {sop_instance})"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:
            log.warning("%s: rejected, dataset cannot be parsed: %s", source_name, exc)
            return self._failure(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed: {exc}")
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class not in ACCEPTED_SOP_CLASSES:
            log.warning("%s: rejected, SOP class %s is not an accepted image class", source_name, sop_class)
            return self._failure(STATUS_SOP_CLASS_MISMATCH, f"SOP class {sop_class} not accepted")
        try:
            frames = decode_dataset(ds, source_name)
        except DicomDecodeError as exc:
            log.warning("rejected: %s", exc)
            return self._failure(STATUS_CANNOT_UNDERSTAND, str(exc).split(": ", 1)[-1])
        info = {
            "sop_instance_uid": str(ds.get("SOPInstanceUID", sop_instance)),
            "sop_class_uid": sop_class,
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")) or None,
            "modality": str(ds.get("Modality", "")) or None,
            "calling_ae": calling_ae,
            "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        }
        if ds.get("PatientID"):
            info["patient_id"] = str(ds.PatientID)
        try:
            self.on_frames(frames, info)
        except Exception as exc:  # the daemon's problem, but the cart must get an answer
            # type only: a message from downstream could carry patient data
            log.error("%s: frames decoded but processing failed: %s", source_name, type(exc).__name__)
            return self._failure(STATUS_PROCESSING_FAILED, f"processing failed: {type(exc).__name__}")
        with self._lock:
            self.received += 1
        log.info("%s: stored, %d frame(s) %dx%d", source_name, len(frames), frames[0].shape[1], frames[0].shape[0])
        return STATUS_SUCCESS
