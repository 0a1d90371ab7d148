"""The HTTP surface under abuse, against the real daemon (`noa-edge serve` on a free loopback port):
aborted MJPEG streams never hang the API, ids/offsets are range-checked, Host/Origin checks, security
headers, wrong-token rate limit, session cookie ≠ token, --token-file, no paths or exception names in answers.
Latencies measured while streams are aborted go to test-artifacts/ (numbers, not assertions)."""

from __future__ import annotations

import json
import re
import socket
import statistics
import struct
import threading
import time
from html.parser import HTMLParser

import cv2
import httpx
import numpy as np
import psutil
import pytest

from conftest import ROOT, DaemonProcess, wait_until
from test_daemon_api import cine_frame_png

ARTIFACTS = ROOT / "test-artifacts"
HUGE_IDS = ["9223372036854775808", "18446744073709551616", "99999999999999999999999", "-1", "0"]
EXAM_ROUTES = ["/api/exams/{}", "/api/exams/{}/nomogram.svg", "/exams/{}", "/exams/{}/frame.png",
               "/exams/{}/roi.png", "/exams/{}/overlay.png", "/exams/{}/report.png", "/exams/{}/report.pdf",
               "/exams/{}/sc.dcm", "/exams/{}/sr.dcm"]
SECURITY_HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


@pytest.fixture(scope="module")
def live(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(test_bundle, tmp_path_factory.mktemp("live"), source=f"video:{demo_cine}",
                      extra=["--no-auto", "--allow-host", "cart.example"]).wait_ready()
    yield d
    d.stop()




# ----------------------------------------------------------------------------------------- no hang
def _abort_streams(port: int, n: int, outcomes: list) -> None:
    """Open /live.mjpg n times and go away after ~30 ms: read nothing, a little, or reset the connection."""
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /live.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.03)  # the server is inside the stream (or waiting for a frame) when the client leaves
        if i % 3 == 1:
            outcomes.append(s.recv(64)[:12])  # b"HTTP/1.1 200" or 503
        elif i % 3 == 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        s.close()


def _stream_opens(url: str) -> int:
    """Status of a fresh stream request (the body is not read beyond the first bytes)."""
    with httpx.Client(timeout=10) as c, c.stream("GET", url + "/live.mjpg") as r:
        return r.status_code


@pytest.mark.parametrize("source", ["none", "quiet folder", "live video"])
def test_aborted_streams_never_hang_the_api(test_bundle, demo_cine, tmp_path, source):
    spec = {"none": "none", "quiet folder": f"folder:{tmp_path / 'empty'}", "live video": f"video:{demo_cine}"}
    (tmp_path / "empty").mkdir()
    d = DaemonProcess(test_bundle, tmp_path / "data", source=spec[source], extra=["--no-auto"]).wait_ready()
    png = cine_frame_png(demo_cine)
    outcomes: list = []
    times = {"/api/health": [], "/": [], "/api/analyze": []}
    try:
        aborter = threading.Thread(target=_abort_streams, args=(d.port, 100, outcomes))
        aborter.start()
        with httpx.Client(base_url=d.url, timeout=60) as c:
            while aborter.is_alive() or not times["/api/analyze"]:
                for path in times:
                    t0 = time.perf_counter()
                    r = (c.post(path, files={"image": ("f.png", png, "image/png")}) if path == "/api/analyze"
                         else c.get(path))
                    times[path].append(time.perf_counter() - t0)
                    assert r.status_code == 200, (path, r.status_code, r.text[:200])
            aborter.join(120)
            assert not aborter.is_alive()
            # every aborted stream gave its slot back: a new viewer is served (or told at once: no source)
            want = 503 if source == "none" else 200
            wait_until(lambda: _stream_opens(d.url) == want, what=f"a fresh stream answering {want}")
            for path in ("/api/health", "/"):
                assert c.get(path).status_code == 200
    finally:
        d.stop()
    report = {path: {"n": len(v), "median_ms": round(statistics.median(v) * 1000, 1),
                     "max_ms": round(max(v) * 1000, 1)} for path, v in times.items()}
    report["aborted_streams"] = 100
    report["first_bytes_seen"] = sorted({o.decode(errors="replace") for o in outcomes})
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"aborted_streams_{source.replace(' ', '_')}.json").write_text(json.dumps(report, indent=2))
    print(f"\nAPI answer times while 100 streams were aborted ({source}):", json.dumps(report))


def test_stream_delivers_frames_and_is_capped(live):
    with httpx.Client(timeout=10) as c, c.stream("GET", live.url + "/live.mjpg") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/x-mixed-replace")
        data = b""
        for chunk in r.iter_bytes():
            data += chunk
            if b"\xff\xd9" in data:
                break
        assert data.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in data
    held = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", live.port), timeout=10)
            s.sendall(b"GET /live.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            held.append(s)
            assert s.recv(12) == b"HTTP/1.1 200"  # this viewer holds a slot now
        with httpx.Client(timeout=10) as c, c.stream("GET", live.url + "/live.mjpg") as fifth:
            assert fifth.status_code == 503  # (a served stream would not end: only its status is read)
            fifth.read()
            assert "at most 4" in fifth.json()["detail"] and fifth.headers["retry-after"]
    finally:
        for s in held:
            s.close()
    wait_until(lambda: _stream_opens(live.url) == 200, what="slots given back after the viewers left")


# ----------------------------------------------------------------------------------------- strict inputs
def test_ids_and_offsets_out_of_range_are_4xx(live):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for route in EXAM_ROUTES:
            for bad in HUGE_IDS:
                r = c.get(route.format(bad))
                assert r.status_code in (404, 422), (route, bad, r.status_code, r.text[:200])
                assert r.json()["detail"], (route, bad)
        r = c.post("/api/exams/9223372036854775808/push")
        assert r.status_code == 422 and r.json()["field"] == "exam_id"
        for path in ("/api/exams?offset=9223372036854775808", "/api/exams?offset=-1",
                     "/history?offset=9223372036854775808", "/history?offset=-5"):
            r = c.get(path)
            assert r.status_code == 422, (path, r.status_code)
        assert c.get("/api/exams?offset=9223372036854775807").json()["exams"] == []  # the largest: empty, not 500
        assert c.get("/api/health").json()["status"] == "ok"


def test_tall_narrow_roi_is_capped_not_500(live):
    tall = np.zeros((2400, 300, 3), np.uint8)
    tall[:, :, :] = np.linspace(0, 255, 2400, dtype=np.uint8)[:, None, None]
    png = cv2.imencode(".png", tall)[1].tobytes()
    r = httpx.post(live.url + "/api/analyze", files={"image": ("tall.png", png, "image/png")},
                   data={"roi": "0,0,8,2400"}, timeout=60)  # 8×2400 upscaled ×28 would be 224×67200 > 65,535
    assert r.status_code == 200, r.text
    for kind, media in (("overlay", "image/jpeg"), ("roi", "image/png")):
        img = httpx.get(live.url + r.json()["links"][kind], timeout=30)
        assert img.status_code == 200 and img.headers["content-type"] == media
        decoded = cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_COLOR)
        assert max(decoded.shape[:2]) <= 4096, (kind, decoded.shape)


def test_chunked_upload_over_the_limit_is_413_without_spooling_it_all(live):
    """No Content-Length to check up front: the guard counts the body as it streams (20 MB limit here)."""
    def body():
        yield (b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(480):  # 30 MB
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    before = httpx.get(live.url + "/api/exams?limit=1").json()["total"]
    r = httpx.post(live.url + "/api/analyze", content=body(), timeout=60,
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
    assert httpx.get(live.url + "/api/exams?limit=1").json()["total"] == before
    assert httpx.get(live.url + "/api/health").status_code == 200


# ----------------------------------------------------------------------------------------- host, origin, headers
def test_host_header_allow_list(live):
    for host in ("evil.example", "attacker.localhost.example", "127.0.0.1.evil.example"):
        r = httpx.get(live.url + "/api/health", headers={"Host": host})
        assert r.status_code == 421 and r.json()["field"] == "host", host
        assert "patient" not in r.text
    for host in (f"127.0.0.1:{live.port}", f"localhost:{live.port}", "localhost", "cart.example:80",
                 f"[::1]:{live.port}"):
        assert httpx.get(live.url + "/api/health", headers={"Host": host}).status_code == 200, host


def test_cross_site_state_changes_are_refused(live, demo_cine):
    png = cine_frame_png(demo_cine)
    before = httpx.get(live.url + "/api/exams?limit=1").json()["total"]
    files = {"image": ("f.png", png, "image/png")}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://localhost:{live.port}"},  # another origin, though the same machine
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        r = httpx.post(live.url + "/api/analyze", files=files, headers=headers, timeout=60)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"], (headers, r.text)
    for method in ("PUT", "DELETE", "PATCH"):
        r = httpx.request(method, live.url + "/api/exams/1", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403, method
    r = httpx.post(live.url + "/api/exams/1/push", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert httpx.get(live.url + "/api/exams?limit=1").json()["total"] == before  # nothing stored
    own = {"Origin": f"http://127.0.0.1:{live.port}", "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(live.url + "/api/analyze", files=files, headers=own, timeout=60).status_code == 200
    assert httpx.get(live.url + "/api/health", headers={"Origin": "http://evil.example"}).status_code == 200


class _Inline(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block."""

    def __init__(self):
        super().__init__()
        self.found, self._in_script = [], False

    def handle_starttag(self, tag, attrs):
        names = {k for k, _ in attrs}
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        self.found += [f"{tag} {k}=" for k in names if k == "style" or k.startswith("on")]


def test_security_headers_on_every_answer_and_no_inline_code(live, demo_cine):
    exam = httpx.post(live.url + "/api/analyze", files={"image": ("f.png", cine_frame_png(demo_cine), "image/png")},
                      timeout=60).json()
    pages = ["/", "/history", f"/exams/{exam['id']}"]
    for path in pages + ["/api/health", "/static/style.css", "/no/such/page", "/api/exams/abc", "/openapi.json",
                         f"/exams/{exam['id']}/frame.png", f"/exams/{exam['id']}/report.pdf", "/live.jpg"]:
        r = httpx.get(live.url + path, timeout=60)
        for name, value in SECURITY_HEADERS.items():
            assert r.headers.get(name) == value, (path, name)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, path
    for path in pages:
        parser = _Inline()
        parser.feed(httpx.get(live.url + path, timeout=30).text)
        assert parser.found == [], (path, parser.found)  # the CSP would block these


def test_answers_show_no_absolute_paths(live, test_bundle, demo_cine):
    health = httpx.get(live.url + "/api/health").json()
    text = json.dumps(health)
    assert not health["data_dir"].startswith("/")
    for secret in (str(ROOT), str(test_bundle.parent), str(demo_cine.parent), "/tmp/"):
        assert secret not in text, secret
    exam = httpx.post(live.url + "/api/analyze", data={}, timeout=60).json()  # the live frame
    assert str(demo_cine.parent) not in json.dumps(exam) and "demo_cine.mp4" in exam["source"]


# ----------------------------------------------------------------------------------------- token
@pytest.fixture(scope="module")
def guarded(test_bundle, tmp_path_factory):
    data = tmp_path_factory.mktemp("guarded")
    token_file = data / "token"
    token_file.write_text("file-token-123456\n")
    d = DaemonProcess(test_bundle, data, extra=["--token-file", str(token_file)]).wait_ready()
    yield d
    d.stop()


def test_token_file_keeps_the_token_out_of_ps(guarded):
    assert not any("file-token-123456" in part for part in psutil.Process(guarded.proc.pid).cmdline())
    ok = httpx.get(guarded.url + "/api/health", headers={"Authorization": "Bearer file-token-123456"})
    assert ok.status_code == 200


def test_session_cookie_is_not_the_token(guarded):
    with httpx.Client(base_url=guarded.url) as c:
        r = c.get("/?token=file-token-123456")
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "file-token-123456" not in cookie
        assert re.search(r"noa_edge_session=[\w-]{40,};", cookie)
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/health").status_code == 200  # the session works
    forged = httpx.get(guarded.url + "/api/health", cookies={"noa_edge_session": "x" * 43})
    assert forged.status_code == 401
    old_style = httpx.get(guarded.url + "/api/health", cookies={"noa_edge_token": "file-token-123456"})
    assert old_style.status_code == 401  # the raw token is no cookie any more


def test_wrong_tokens_are_rate_limited(guarded):
    # loopback has more than one address: 127.0.0.2 is another client, so the other tests stay unlocked
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=guarded.url, transport=transport) as c:
        statuses = [c.get("/api/health", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
                    for i in range(10)]
        assert statuses == [401] * 10
        locked = c.get("/api/health", headers={"Authorization": "Bearer wrong-again"})
        assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 60
        right = c.get("/api/health", headers={"Authorization": "Bearer file-token-123456"})
        assert right.status_code == 429  # locked out, whatever it sends now
        for i in range(5):
            assert c.get("/api/health", headers={"Authorization": f"Bearer more-{i}"}).status_code == 429
    assert httpx.get(guarded.url + "/api/health",  # another address is not locked out
                     headers={"Authorization": "Bearer file-token-123456"}).status_code == 200
    wait_until(lambda: "locked out" in guarded.log(), what="the lockout log line")
    assert guarded.log().count("locked out") == 1  # one line per lockout, not per request
    metrics = httpx.get(guarded.url + "/metrics", headers={"Authorization": "Bearer file-token-123456"}).text
    assert "noa_edge_auth_lockouts_total 1" in metrics


def test_failures_name_a_log_reference_not_the_exception(test_bundle, tmp_path, demo_cine, caplog):
    """Fault injection in-process (the real app, its analyzer made to fail): the answer carries no exception
    type, message or path; the log has the traceback under the same reference."""
    from fastapi.testclient import TestClient

    from edge.daemon import DaemonConfig
    from edge.web import create_app

    app = create_app(DaemonConfig(bundle=str(test_bundle), source=None, data_dir=str(tmp_path), threads=1))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        daemon = app.user_middleware[0].kwargs["daemon"]

        def broken(*args, **kwargs):
            raise RuntimeError(f"cannot write {tmp_path}/secret.bin")

        daemon.analyzer.analyze = broken
        r = c.post("/api/analyze", files={"image": ("f.png", cine_frame_png(demo_cine), "image/png")})
        assert r.status_code == 500
        assert re.fullmatch(r"analysis failed; see the daemon log \(ref \d+\)", r.json()["detail"]), r.text
        daemon.store.count = broken  # a bug in any route: the guard answers, with the security headers
        r = c.get("/api/exams")
        assert r.status_code == 500 and re.fullmatch(r"request failed; see the daemon log \(ref \d+\)",
                                                     r.json()["detail"]), r.text
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "RuntimeError" in caplog.text and "secret.bin" in caplog.text  # ...which the log keeps
