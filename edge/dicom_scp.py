"""The DICOM C-STORE SCP carts push their images to (`--source dicom:AE_TITLE@PORT`).

Success means "stored": each object is checked (SOP class, size against the decode limits, the frame the
daemon will use decodes) and handed to `on_object(data, info)`, which writes it to the durable inbox
(edge/inbox.py) and says "queued", "duplicate" or "full"; only then does the cart get an answer:
Success for queued and duplicate (the object is stored, a repeat is logged and not analysed twice),
0xA700 Out of Resources when the inbox is full, a 0xA900/0xC000-family failure with the reason for a bad
object. Analysis happens later, in the inbox worker.

Access (`ScpAccess`, serve options --dicom-host/--dicom-allow/--dicom-max-associations, --dicom-tls-*):
the SCP binds its own address (loopback by default; a network address needs a list of allowed calling AE
titles), the called AE title must be ours, at most `max_associations` at once, and short timeouts: a
socket that sends no association request is dropped after `acse_timeout` (pynetdicom's ARTIM timer), an
association silent for `network_timeout` is aborted, so idle connections cannot lock carts out for long.
Optional TLS (DICOM PS3.15 B.1 style): a certificate and key, and a CA to require client certificates.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset

from .dicom_io import (
    ACCEPTED_SOP_CLASSES,
    DicomConfigError,
    DicomDecodeError,
    DicomSopClassError,
    _check_ae_title,
    check_sop_class,
    dataset_identifiers,
    decodable_transfer_syntaxes,
    decode_dataset_frame,
)
from .errors import InputError

log = logging.getLogger("noa_edge.dicom")

# Statuses (PS3.4 Annex B.2.3): 0xA7xx out of resources, 0xA900 data set does not match SOP class,
# 0xCxxx cannot understand.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILED = 0xC001
MAX_PDU = 1 << 20  # largest PDU a peer may send us (bounds one read; 0 would mean unlimited)


@dataclass(frozen=True)
class ScpAccess:
    host: str = "127.0.0.1"
    allow: tuple[str, ...] = ()          # calling AE titles allowed; empty: any (loopback only)
    max_associations: int = 10
    acse_timeout: float = 10.0           # association request/release, and idle sockets (ARTIM)
    dimse_timeout: float = 30.0          # waiting for the next DIMSE message
    network_timeout: float = 30.0        # an association silent this long is aborted
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None            # set: clients must present a certificate signed by it


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(access: ScpAccess) -> None:
    """Refuse settings that would open the port to anyone: a network address without allowed AE titles."""
    for title in access.allow:
        _check_ae_title(title, "--dicom-allow")
    if not is_loopback_host(access.host) and not access.allow:
        raise DicomConfigError(f"--dicom-host {access.host} is reachable from the network: list the carts' calling "
                               "AE titles with --dicom-allow CART1,CART2 (or keep the default 127.0.0.1)")
    if access.max_associations < 1:
        raise DicomConfigError("--dicom-max-associations must be ≥ 1")
    if bool(access.tls_cert) != bool(access.tls_key) or (access.tls_ca and not access.tls_cert):
        raise DicomConfigError("DICOM TLS needs --dicom-tls-cert and --dicom-tls-key (and optionally --dicom-tls-ca)")


def tls_context(access: ScpAccess) -> ssl.SSLContext | None:
    if not access.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(access.tls_cert, access.tls_key)
        if access.tls_ca:
            ctx.load_verify_locations(access.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise DicomConfigError(f"DICOM TLS: cannot load certificate/key/CA: {exc}") from None
    return ctx


class DicomStoreSCP:
    """C-STORE SCP: each accepted object goes to `on_object(data, info)` -> "queued" | "duplicate" | "full".

    `data` is the object as received (Part 10 bytes); `info` = dataset_identifiers (validated UIDs,
    patient_id only if present) + "calling_ae", "transfer_syntax", "n_frames". A bad object answers a
    failure status with the reason in the log (no patient data) and the server keeps serving.
    `on_object` runs in the association's thread (one per connected cart) and the cart waits for it;
    an exception in it answers the cart 0xC001.
    """

    def __init__(self, ae_title: str, port: int, on_object: Callable[[bytes, dict], str],
                 access: ScpAccess | None = None):
        self.ae_title = _check_ae_title(ae_title, "DICOM SCP")
        self.port = int(port)
        self.access = access or ScpAccess()
        self.host = self.access.host
        self.on_object = on_object
        self.transfer_syntaxes = decodable_transfer_syntaxes()
        self._server: Any = None  # pynetdicom's ThreadedAssociationServer once started
        self._lock = threading.Lock()
        self.received = 0
        self.duplicates = 0
        self.failed = 0
        self.refused_full = 0
        self.rejected_associations = 0

    def start(self) -> DicomStoreSCP:
        from pynetdicom import AE, evt

        check_access(self.access)
        ae = AE(ae_title=self.ae_title)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        # A C-ECHO lets cart engineers test the link before sending images.
        ae.add_supported_context("1.2.840.10008.1.1",
                                 [dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian])
        ae.maximum_pdu_size = MAX_PDU
        ae.require_called_aet = True
        if self.access.allow:
            ae.require_calling_aet = list(self.access.allow)
        ae.maximum_associations = self.access.max_associations
        ae.acse_timeout = self.access.acse_timeout
        ae.dimse_timeout = self.access.dimse_timeout
        ae.network_timeout = self.access.network_timeout
        handlers: list = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers,
                                           ssl_context=tls_context(self.access))
        except OSError as exc:
            raise DicomConfigError(f"DICOM SCP cannot listen on {self.host}:{self.port}: "
                                   f"{exc.strerror or exc}") from None
        log.info("DICOM SCP %s listening on %s:%d%s%s", self.ae_title, self.host, self.port,
                 f", calling AE titles {', '.join(self.access.allow)}" if self.access.allow else "",
                 ", TLS" if self.access.tls_cert else "")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("DICOM SCP %s stopped", self.ae_title)

    def __enter__(self) -> DicomStoreSCP:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _count(self, key: str) -> None:
        with self._lock:
            setattr(self, key, getattr(self, key) + 1)

    def _failure(self, status: int, reason: str) -> Dataset:
        self._count("refused_full" if status == STATUS_OUT_OF_RESOURCES else "failed")
        response = Dataset()
        response.Status = status
        response.ErrorComment = reason[:64]  # LO, 64 chars
        return response

    def _on_rejected(self, event) -> None:
        self._count("rejected_associations")
        requestor = event.assoc.requestor
        log.warning("DICOM association from %s:%s (calling AE %r, called AE %r) rejected: not allowed, or the "
                    "limit of %d associations is reached", requestor.address, requestor.port,
                    str(requestor.ae_title).strip(), str(event.assoc.acceptor.ae_title).strip(),
                    self.access.max_associations)

    def _handle_store(self, event) -> Dataset | int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        sop_instance = str(event.request.AffectedSOPInstanceUID)
        source_name = f"C-STORE from {calling_ae} (SOP instance {sop_instance})"
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # noqa: BLE001 - pynetdicom/pydicom raise many types on a bad dataset
            log.warning("%s: rejected, dataset cannot be parsed: %s", source_name, exc)
            return self._failure(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed: {exc}")
        try:
            check_sop_class(ds, source_name)
            decoded = decode_dataset_frame(ds, source_name)  # refuse a bad object now, not after Success
        except DicomSopClassError as exc:
            log.warning("rejected: %s", exc)
            return self._failure(STATUS_SOP_CLASS_MISMATCH, str(exc).split(": ", 1)[-1])
        except (DicomDecodeError, InputError) as exc:
            log.warning("rejected: %s", exc)
            return self._failure(STATUS_CANNOT_UNDERSTAND, str(exc).split(": ", 1)[-1])
        info = dataset_identifiers(ds)
        info.update(calling_ae=calling_ae, transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    n_frames=decoded.n_frames)
        try:
            outcome = self.on_object(event.encoded_dataset(), info)
        except Exception as exc:  # noqa: BLE001 - the daemon's problem, but the cart must get an answer
            # type only: a message from downstream could carry patient data
            log.error("%s: not stored: %s", source_name, type(exc).__name__)
            return self._failure(STATUS_PROCESSING_FAILED, f"not stored: {type(exc).__name__}")
        if outcome == "full":
            log.warning("%s: refused with Out of Resources (0xA700): the inbox is full; the cart should retry later",
                        source_name)
            return self._failure(STATUS_OUT_OF_RESOURCES, "inbox full, retry later")
        if outcome == "duplicate":
            self._count("duplicates")
            log.info("%s: already received (same SOP Instance UID): stored once, not analysed again", source_name)
            return STATUS_SUCCESS
        self._count("received")
        h, w = decoded.frame.shape[:2]
        log.info("%s: stored in the inbox, %d frame(s) %dx%d", source_name, decoded.n_frames, w, h)
        return STATUS_SUCCESS
