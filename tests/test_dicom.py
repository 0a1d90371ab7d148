"""DICOM input: decoding the ultrasound / secondary-capture files shipped in the pydicom wheel, clear
errors on bad files, and the C-STORE SCP fed by dcmtk's real `storescu` (Debian package dcmtk)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading

import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from edge.dicom_io import (
    DicomConfigError,
    DicomDecodeError,
    clean_patient_id,
    dataset_identifiers,
    decodable_transfer_syntaxes,
    decode_dicom_bytes,
    decode_dicom_frame,
    decode_dicom_path,
    parse_dicom_source,
    parse_pacs,
    valid_uid,
)
from edge.dicom_scp import DicomStoreSCP, ScpAccess, check_access


def _example(name):
    return str(examples.get_path(name))


def _testdata(name):
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not in this pydicom wheel"
    return str(path)


def _gray_fraction(frame: np.ndarray, tol: int = 8) -> float:
    """Fraction of pixels with R≈G≈B. B-mode ultrasound is mostly gray; YBR left unconverted is not."""
    f = frame.astype(np.int16)
    return float(np.mean((np.abs(f[..., 0] - f[..., 1]) < tol) & (np.abs(f[..., 1] - f[..., 2]) < tol)))


# --------------------------------------------------------------------------------------------- decoding

# (file, expected frames, expected (H, W)): US Image, US Multi-frame and SC in every syntax we claim.
DECODE_CASES = [
    (lambda: _example("rgb_color"), 1, (240, 320)),          # US, explicit LE, RGB
    (lambda: _example("palette_color"), 1, (350, 800)),      # US, PALETTE COLOR
    (lambda: _example("ybr_color"), 30, (240, 320)),         # US multi-frame, JPEG baseline, YBR_FULL_422
    (lambda: _example("jpeg2k"), 1, (480, 640)),             # US, JPEG 2000 lossless, YBR_RCT
    (lambda: _testdata("SC_rgb_rle.dcm"), 1, (100, 100)),    # SC, RLE
    (lambda: _testdata("SC_rgb_rle_16bit_2frame.dcm"), 2, (100, 100)),  # SC, RLE, 16-bit RGB, 2 frames
    (lambda: _testdata("SC_rgb_jpeg_gdcm.dcm"), 1, (100, 100)),          # SC, JPEG lossless SV1
    (lambda: _testdata("SC_rgb_jpeg_dcmtk.dcm"), 1, (100, 100)),         # SC, JPEG baseline, YBR_FULL
    (lambda: _testdata("SC_ybr_full_422_uncompressed.dcm"), 1, (100, 100)),
    (lambda: _testdata("SC_rgb_gdcm_KY.dcm"), 1, (100, 100)),            # SC, JPEG 2000 (lossy syntax)
    (lambda: _testdata("ExplVR_BigEnd.dcm"), 1, (60, 80)),               # US, explicit big endian
    (lambda: _testdata("MR_small.dcm"), 1, (64, 64)),                    # MONOCHROME2, 16-bit
]


@pytest.mark.parametrize("path_fn,n_frames,shape", DECODE_CASES)
def test_decodes_to_uint8_rgb_frames(path_fn, n_frames, shape):
    frames = decode_dicom_path(path_fn())
    assert len(frames) == n_frames
    for frame in frames:
        assert frame.dtype == np.uint8 and frame.shape == (*shape, 3)
        assert frame.flags.c_contiguous
        assert frame.max() > frame.min()  # not blank


def test_same_image_in_different_syntaxes_decodes_to_the_same_pixels():
    reference = decode_dicom_path(_testdata("SC_rgb_rle.dcm"))[0].astype(np.int16)
    lossless = decode_dicom_path(_testdata("SC_rgb_jpeg_gdcm.dcm"))[0].astype(np.int16)
    assert np.array_equal(lossless, reference)
    wide = decode_dicom_path(_testdata("SC_rgb_rle_16bit.dcm"))[0].astype(np.int16)
    assert np.abs(wide - reference).max() <= 1  # 16-bit scaled by bits stored, not min-max
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"):  # YBR -> RGB
        other = decode_dicom_path(_testdata(name))[0].astype(np.int16)
        assert np.abs(other - reference).mean() < 4, name


def test_ybr_multiframe_is_converted_to_rgb():
    frames = decode_dicom_path(_example("ybr_color"))
    # Gray B-mode stays gray only if Y/Cb/Cr was converted; raw YBR would give (Y, 128, 128).
    assert _gray_fraction(frames[0]) > 0.9
    assert not np.array_equal(frames[0], frames[-1])  # distinct cine frames


def test_palette_color_goes_through_the_lut():
    ds = pydicom.dcmread(_example("palette_color"))
    frame = decode_dicom_path(_example("palette_color"))[0]
    expected = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    expected = np.round(expected.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(frame, expected)
    assert _gray_fraction(frame) < 0.99  # the palette adds colour


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_testdata("MR_small.dcm"))
    mono2 = decode_dicom_path(_testdata("MR_small.dcm"))[0]
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    mono1 = decode_dicom_path(path)[0]
    assert np.array_equal(mono1, 255 - mono2)
    assert (mono2[..., 0] == mono2[..., 1]).all()


def test_truncated_file_names_the_file_and_says_truncated():
    data = open(_example("rgb_color"), "rb").read()
    with pytest.raises(DicomDecodeError, match=r"cart_a\.dcm: .*(truncated|shorter)"):
        decode_dicom_bytes(data[: len(data) // 2], "cart_a.dcm")
    data = open(_example("jpeg2k"), "rb").read()
    with pytest.raises(DicomDecodeError, match=r"cart_b\.dcm: .*truncated"):
        decode_dicom_bytes(data[: len(data) // 2], "cart_b.dcm")


def test_truncated_file_on_disk(tmp_path):
    data = open(_example("ybr_color"), "rb").read()
    path = tmp_path / "cine.dcm"
    path.write_bytes(data[:3000])
    with pytest.raises(DicomDecodeError, match=r"cine\.dcm: .*truncated"):
        decode_dicom_path(path)


@pytest.mark.parametrize("payload", [b"", b"hello, not dicom" * 20, b"\x89PNG\r\n\x1a\n" + bytes(300)])
def test_non_dicom_bytes(payload):
    with pytest.raises(DicomDecodeError, match=r"upload\.bin: (empty file|not a DICOM file)"):
        decode_dicom_bytes(payload, "upload.bin")


def test_object_without_pixel_data():
    with pytest.raises(DicomDecodeError, match=r"test-SR\.dcm: no pixel data"):
        decode_dicom_path(_testdata("test-SR.dcm"))


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(_example("rgb_color"))
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(100)])  # pretend MPEG-2 stream
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DicomDecodeError, match=r"video\.dcm: unsupported transfer syntax .*MPEG2"):
        decode_dicom_path(path)


def test_missing_file(tmp_path):
    with pytest.raises(DicomDecodeError, match=r"nope\.dcm: cannot read file"):
        decode_dicom_path(tmp_path / "nope.dcm")


def test_decodable_transfer_syntaxes_cover_the_issue():
    names = {ts.name for ts in decodable_transfer_syntaxes()}
    for needed in ("Explicit VR Little Endian", "Implicit VR Little Endian", "RLE Lossless",
                   "JPEG Baseline (Process 1)", "JPEG Lossless, Non-Hierarchical, First-Order Prediction "
                   "(Process 14 [Selection Value 1])", "JPEG 2000 Image Compression (Lossless Only)",
                   "JPEG 2000 Image Compression"):
        assert needed in names


# --------------------------------------------------------------------------------------------- addresses


def test_parse_dicom_source():
    assert parse_dicom_source("dicom:NOAEDGE@11112") == ("NOAEDGE", 11112)
    for bad, why in [("dicom:NOAEDGE", "form"), ("dicom:@104", "AE title"), ("dicom:X@0", "port"),
                     ("dicom:X@http", "port"), ("dicom:WAY_TOO_LONG_AE_TITLE@104", "AE title"),
                     ("video:NOAEDGE@104", "form")]:
        with pytest.raises(DicomConfigError, match=why):
            parse_dicom_source(bad)


def test_parse_pacs():
    assert parse_pacs("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    assert parse_pacs("ORTHANC@pacs.local:4242") == ("ORTHANC", "pacs.local", 4242)
    for bad, why in [("10.0.0.5:104", "form"), ("PACS@10.0.0.5", "form"), ("PACS@:104", "form"),
                     ("PACS@host:99999", "port"), ("@host:104", "AE title")]:
        with pytest.raises(DicomConfigError, match=why):
            parse_pacs(bad)


# --------------------------------------------------------------------------------------------- SCP

STORESCU = shutil.which("storescu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="dcmtk storescu not installed (apt install dcmtk)")

# storescu proposes only uncompressed syntaxes by default; compressed files need their syntax proposed.
PROPOSE = {
    "1.2.840.10008.1.2.4.50": ["-xy"],   # JPEG baseline
    "1.2.840.10008.1.2.4.70": ["-xs"],   # JPEG lossless SV1
    "1.2.840.10008.1.2.4.90": ["-xv"],   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ["-xw"],   # JPEG 2000
    "1.2.840.10008.1.2.5": ["-xr"],      # RLE
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _storescu(port: int, path: str, ae_title: str = "NOATEST") -> subprocess.CompletedProcess:
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    cmd = [STORESCU, "-v", "-aet", "CART", "-aec", ae_title, *PROPOSE.get(ts, []), "localhost", str(port), path]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture()
def scp():
    """An SCP whose store callback decodes what it was handed (the bytes the inbox would keep)."""
    received: list[tuple[list[np.ndarray], dict]] = []
    lock = threading.Lock()

    def on_object(data, info):
        frames = decode_dicom_bytes(data, "received")
        with lock:
            received.append((frames, info))
        return "queued"

    server = DicomStoreSCP("NOATEST", _free_port(), on_object).start()
    server.received_items = received
    yield server
    server.stop()


@needs_dcmtk
def test_storescu_sends_the_pydicom_ultrasound_examples(scp, caplog):
    caplog.set_level(logging.INFO)
    files = [_example("rgb_color"), _example("palette_color"), _example("ybr_color"), _example("jpeg2k"),
             _testdata("SC_rgb_rle.dcm"), _testdata("SC_rgb_jpeg_gdcm.dcm")]
    for path in files:
        result = _storescu(scp.port, path)
        assert result.returncode == 0, result.stderr
        assert "Received Store Response (Success)" in result.stderr
    assert len(scp.received_items) == len(files)
    for path, (frames, info) in zip(files, scp.received_items, strict=True):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        # the compressed ones travel compressed (no silent conversion by storescu) ...
        assert info["transfer_syntax"] == str(ds.file_meta.TransferSyntaxUID)
        # ... and the frames are exactly what decoding the file gives.
        expected = decode_dicom_path(path)
        assert len(frames) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
        assert info["sop_instance_uid"] == str(ds.SOPInstanceUID)
        assert info["calling_ae"] == "CART"
        assert info["modality"] == str(ds.Modality)
        assert info.get("patient_id") == (str(ds.PatientID) if ds.get("PatientID") else None)
    assert len(scp.received_items[2][0]) == 30  # the multi-frame cine
    # patient identifiers never reach the log
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    for _, info in scp.received_items:
        if info.get("patient_id"):
            assert info["patient_id"] not in log_text


@needs_dcmtk
def test_bad_object_gets_failure_status_and_scp_keeps_serving(scp, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="noa_edge.dicom")
    ds = pydicom.dcmread(_example("rgb_color"))
    ds.PixelData = ds.PixelData[:1000]  # header says 320x240 RGB, data is cut short
    bad = tmp_path / "bad_us.dcm"
    ds.save_as(bad)
    result = _storescu(scp.port, str(bad))
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr
    assert scp.received_items == [] and scp.failed == 1
    assert any("shorter" in r.getMessage() for r in caplog.records)

    # a non-image SOP class is not even negotiated; still, the server stays up
    result = _storescu(scp.port, _testdata("CT_small.dcm"))
    assert result.returncode != 0 and "No presentation context" in result.stderr

    result = _storescu(scp.port, _example("rgb_color"))
    assert result.returncode == 0, result.stderr
    assert len(scp.received_items) == 1 and scp.received_items[0][0][0].shape == (240, 320, 3)


@needs_dcmtk
def test_processing_failure_downstream_answers_failure(tmp_path):
    def explode(data, info):
        raise RuntimeError(f"store is full for patient {info.get('patient_id')}")

    server = DicomStoreSCP("NOATEST", _free_port(), explode).start()  # e.g. the inbox cannot be written
    try:
        result = _storescu(server.port, _example("rgb_color"))
        assert result.returncode != 0 and "Received Store Response (Error" in result.stderr
        result = _storescu(server.port, _example("rgb_color"))  # still listening
        assert "Received Store Response (Error" in result.stderr
    finally:
        server.stop()


def test_scp_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DicomConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            DicomStoreSCP("NOATEST", port, lambda d, i: "queued").start()


# --------------------------------------------------------------------------------------------- issue 18

DCM2PNM = shutil.which("dcm2pnm")
DCMCONV = shutil.which("dcmconv")


@pytest.mark.skipif(not (DCM2PNM and DCMCONV), reason="dcmtk dcm2pnm/dcmconv not installed (make sysdeps)")
def test_big_endian_palette_matches_dcmtk(tmp_path):
    """OBXXXX1A_expb (pydicom-data): the palette example OBXXXX1A in explicit VR big endian, made here
    with dcmtk's dcmconv. It decoded near-black (16-bit LUT entries read in the machine's byte order);
    now it must match dcmtk's own rendering (dcm2pnm) and its little-endian original."""
    expb = tmp_path / "OBXXXX1A_expb.dcm"
    subprocess.run([DCMCONV, "+tb", _example("palette_color"), str(expb)], check=True, capture_output=True)
    assert pydicom.dcmread(expb, stop_before_pixels=True).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
    reference = tmp_path / "ref.png"
    subprocess.run([DCM2PNM, "+on", str(expb), str(reference)], check=True, capture_output=True)
    import cv2

    ref = cv2.cvtColor(cv2.imread(str(reference)), cv2.COLOR_BGR2RGB).astype(np.int16)
    ours = decode_dicom_path(expb)[0]
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(np.int16) - ref).mean() < 0.5  # rounding only (was ~20: near-black)
    assert ours.mean() > 10
    assert np.array_equal(ours, decode_dicom_path(_example("palette_color"))[0])


def test_identifiers_are_validated_before_store_and_export():
    ds = pydicom.dcmread(_example("rgb_color"), stop_before_pixels=True)
    ds.PatientID = "ABC123\\XYZ"          # a backslash: two values
    ds.StudyInstanceUID = "1.2.3.04.x"    # not a UID
    ids = dataset_identifiers(ds)
    assert ids["patient_id"] == "ABC123"  # not "['ABC123', 'XYZ']"
    assert valid_uid(ids["study_instance_uid"]) and ids["study_instance_uid"] != "1.2.3.04.x"
    assert dataset_identifiers(ds)["study_instance_uid"] == ids["study_instance_uid"]  # stable: a study stays one
    assert ids["sop_instance_uid"] == str(ds.SOPInstanceUID)
    notes = " ".join(ids["identifier_notes"])
    assert "StudyInstanceUID was not a valid DICOM UID" in notes and "PatientID held 2 values" in notes
    assert "ABC123" not in notes  # no patient data in notes
    assert clean_patient_id("  A\x00B\x1f ") == "AB"
    assert clean_patient_id("x" * 80) == "x" * 64
    assert clean_patient_id("") is None and clean_patient_id(None) is None
    for good in ("1.2.840.10008.5.1.4.1.1.6.1", "0", "2.25.1"):
        assert valid_uid(good)
    for bad in ("", "1..2", "1.02", "1.2.", "a.b", "1" * 65):
        assert not valid_uid(bad)


def test_decode_frame_decodes_the_middle_frame_only_and_checks_limits():
    data = open(_example("ybr_color"), "rb").read()
    decoded = decode_dicom_frame(data, "cine.dcm")
    assert (decoded.n_frames, decoded.index) == (30, 15)
    assert np.array_equal(decoded.frame, decode_dicom_path(_example("ybr_color"))[15])
    with pytest.raises(DicomDecodeError, match="frame index 30 out of range"):
        decode_dicom_frame(data, "cine.dcm", 30)


def test_access_settings_refuse_an_open_network_port():
    check_access(ScpAccess())
    with pytest.raises(DicomConfigError, match="--dicom-allow"):
        check_access(ScpAccess(host="0.0.0.0"))
    check_access(ScpAccess(host="0.0.0.0", allow=("CART1", "CART2")))
    with pytest.raises(DicomConfigError, match="AE title"):
        check_access(ScpAccess(allow=("WAY_TOO_LONG_AE_TITLE",)))
    with pytest.raises(DicomConfigError, match="tls"):
        check_access(ScpAccess(tls_cert="cert.pem"))


@needs_dcmtk
def test_only_allowed_calling_and_our_called_ae_titles_are_accepted(caplog):
    caplog.set_level(logging.WARNING, logger="noa_edge.dicom")
    got = []
    server = DicomStoreSCP("NOATEST", _free_port(), lambda d, i: got.append(i) or "queued",
                           access=ScpAccess(allow=("CART", "CART2"))).start()
    try:
        result = _storescu(server.port, _example("rgb_color"))  # calling AE CART
        assert result.returncode == 0 and "Received Store Response (Success)" in result.stderr
        for aet, aec, reason in (("INTRUDER", "NOATEST", "Calling AE Title Not Recognized"),
                                 ("CART", "OTHER", "Called AE Title Not Recognized")):
            r = subprocess.run([STORESCU, "-v", "-aet", aet, "-aec", aec, "localhost", str(server.port),
                                _example("rgb_color")], capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "Association Rejected" in r.stderr and reason in r.stderr
        assert len(got) == 1 and server.rejected_associations == 2
        assert "calling AE 'INTRUDER'" in caplog.text
    finally:
        server.stop()


@needs_dcmtk
def test_full_inbox_answers_out_of_resources(caplog):
    server = DicomStoreSCP("NOATEST", _free_port(), lambda d, i: "full").start()
    try:
        result = _storescu(server.port, _example("rgb_color"))
        assert "Received Store Response (Refused: OutOfResources)" in result.stderr
        assert server.refused_full == 1 and "Out of Resources (0xA700)" in caplog.text
    finally:
        server.stop()


@needs_dcmtk
def test_many_frame_object_gets_a_failure_status_with_the_reason(scp, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="noa_edge.dicom")
    ds = pydicom.dcmread(_example("ybr_color"))  # a real 30-frame JPEG cine, claiming 5000 frames
    ds.NumberOfFrames = 5000
    path = tmp_path / "cine_bomb.dcm"
    ds.save_as(path)
    result = _storescu(scp.port, str(path))
    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr
    assert "5000 frames exceeds the limit of 1000 frames" in caplog.text
    assert scp.received_items == []
    assert _storescu(scp.port, _example("rgb_color")).returncode == 0  # still serving


@needs_dcmtk
def test_idle_connections_are_dropped_and_cannot_lock_carts_out():
    """More idle TCP connections than the association limit: the SCP closes them after the ACSE timeout
    (pynetdicom's ARTIM timer), so a real cart gets through."""
    server = DicomStoreSCP("NOATEST", _free_port(), lambda d, i: "queued",
                           access=ScpAccess(max_associations=2, acse_timeout=1.0)).start()
    idle = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.settimeout(20)
            idle.append(s)
        for s in idle:  # each is closed by the server (recv returns b"" or the connection is reset)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
        result = _storescu(server.port, _example("rgb_color"))
        assert result.returncode == 0, result.stderr
    finally:
        for s in idle:
            s.close()
        server.stop()


@needs_dcmtk
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_dicom_tls_with_client_certificates(tmp_path):
    """The README's TLS set-up: self-signed server and cart certificates made with openssl; the SCP requires
    a cart certificate signed by the CA it trusts (here the cart's own), so plain DICOM is refused."""
    for name, cn in (("server", "localhost"), ("cart", "cart")):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem"),
                        "-days", "2", "-subj", f"/CN={cn}"],
                       check=True, capture_output=True, timeout=60)
    got = []
    access = ScpAccess(tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.key"),
                       tls_ca=str(tmp_path / "cart.pem"))
    server = DicomStoreSCP("NOATEST", _free_port(), lambda d, i: got.append(i) or "queued", access=access).start()
    try:
        tls = ["+tls", str(tmp_path / "cart.key"), str(tmp_path / "cart.pem"), "+cf", str(tmp_path / "server.pem")]
        r = subprocess.run([STORESCU, "-v", "-aet", "CART", "-aec", "NOATEST", *tls, "localhost", str(server.port),
                            _example("rgb_color")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Received Store Response (Success)" in r.stderr, r.stderr
        plain = _storescu(server.port, _example("rgb_color"))
        assert plain.returncode != 0 and "Success" not in plain.stderr
        assert len(got) == 1
    finally:
        server.stop()
