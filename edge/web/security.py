"""The HTTP guard in front of every route (a plain ASGI middleware, so streams and disconnects pass through).

In order, for each request:
- Host header allow-list (loopback names, the --host value, --allow-host; on a wildcard bind also this
  machine's own addresses) → 421 otherwise: a DNS-rebinding page never reaches the API.
- State-changing methods (POST/PUT/PATCH/DELETE): an Origin header, when sent, must be the daemon's own
  origin, and Sec-Fetch-Site must not be cross-site/same-site → 403 (no cross-site form can store an exam).
- With --token: a valid session cookie, else the token (Authorization: Bearer, X-Token, or ?token= once,
  which opens a session). The cookie holds a random session id, never the token. Wrong tokens are
  rate-limited per client address (MAX_FAILURES per FAILURE_WINDOW_S → 429 with Retry-After, one log line
  per lockout).
- Body size: Content-Length over the limit → 413 at once; a chunked body is counted as it streams → 413.
- Every answer gets the security headers (CSP without inline script/style, X-Frame-Options, nosniff,
  Referrer-Policy), Cache-Control no-store; an unhandled error becomes a 500 naming only a log reference.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import time
from collections import OrderedDict, deque
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import psutil
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException

from ..daemon import Daemon, DaemonConfig
from .common import error, internal_error

log = logging.getLogger("noa_edge.server")

SESSION_COOKIE = "noa_edge_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_CLIENTS = 4096
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-resource-policy", b"same-origin")]


def allowed_hosts(cfg: DaemonConfig) -> set[str]:
    """Host names (lower case, no port) the daemon answers to."""
    hosts = set(LOOPBACK_NAMES) | {h.strip().lower().strip("[]") for h in cfg.allow_hosts if h.strip()}
    host = (cfg.host or "").lower().strip("[]")
    if host in WILDCARD_HOSTS:  # bound everywhere: this machine's own names and addresses
        hosts |= {socket.gethostname().lower()}
        hosts |= {a.address.split("%")[0].lower() for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family in (socket.AF_INET, socket.AF_INET6)}
    else:
        hosts.add(host)
    return hosts


def split_host(value: str) -> tuple[str, int | None]:
    """'Host' header value → (lower-case name, port or None); '[::1]:8080' → ('::1', 8080)."""
    try:
        parts = urlsplit("//" + value.strip())
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", None


class RateLimiter:
    """Wrong tokens per client address in a sliding window; bounded memory."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def retry_after(self, client: str, now: float) -> float:
        """Seconds this client is still locked out (0: not locked)."""
        times = self._failures.get(client)
        if not times:
            return 0.0
        while times and now - times[0] > self.window_s:
            times.popleft()
        return self.window_s - (now - times[0]) if len(times) >= self.max_failures else 0.0

    def fail(self, client: str, now: float) -> bool:
        """Record a wrong token; True when this one starts a lockout."""
        times = self._failures.pop(client, deque())
        times.append(now)
        self._failures[client] = times
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)
        return len(times) == self.max_failures


class HttpGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app, *, cfg: DaemonConfig, daemon: Daemon, max_upload: int):
        self.app, self.cfg, self.daemon = app, cfg, daemon
        self.max_body = max_upload + 64 * 1024  # multipart framing and the form fields
        self.max_upload = max_upload
        self.hosts = allowed_hosts(cfg)
        self.limiter = RateLimiter()
        self.sessions: OrderedDict[str, float] = OrderedDict()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.daemon.count("requests")
        started = {"yes": False, "cookie": None}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                started["yes"] = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.raw.append((name, value))
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
                if started["cookie"]:
                    headers.append("set-cookie", started["cookie"])
            await send(message)

        refusal = self._refusal(scope, started)
        if refusal is not None:
            return await refusal(scope, receive, send_with_headers)
        try:
            await self.app(scope, self._limited(receive), send_with_headers)
        except Exception as exc:  # noqa: BLE001 - the answer names a log reference, never the exception
            if started["yes"]:
                raise
            response = internal_error("request failed", exc)
            await response(scope, receive, send_with_headers)

    # -- the checks
    def _refusal(self, scope, started: dict):
        headers = Headers(scope=scope)
        host, port = split_host(headers.get("host", ""))
        if host not in self.hosts:
            self.daemon.count("requests_refused")
            return error(421, "Host header not allowed: open the daemon by its address or loopback name, or "
                              "start it with --allow-host NAME", "host")
        if scope["method"] not in SAFE_METHODS:
            problem = self._cross_site(headers, host, port)
            if problem:
                self.daemon.count("requests_refused")
                return error(403, problem)
        if self.cfg.token:
            refusal = self._auth(scope, headers, started)
            if refusal is not None:
                return refusal
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            self.daemon.count("uploads_too_large")
            return error(413, f"upload of {int(length) / 1e6:.1f} MB exceeds the limit of "
                              f"{self.max_upload / 1e6:.1f} MB")
        return None

    @staticmethod
    def _cross_site(headers: Headers, host: str, port: int | None) -> str:
        site = headers.get("sec-fetch-site", "")
        if site in ("cross-site", "same-site"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        origin = headers.get("origin")
        if origin is None:
            return ""  # not a browser cross-site request (browsers send Origin on every cross-origin POST)
        try:
            parts = urlsplit(origin)
            default = {"http": 80, "https": 443}.get(parts.scheme)
            same = (parts.hostname or "").lower() == host and (parts.port or default) == (port or default)
        except ValueError:
            same = False
        return "" if same else "cross-site request refused: Origin is not this daemon's own origin"

    def _auth(self, scope, headers: Headers, started: dict):
        now = time.monotonic()
        if self._valid_session(headers, now):
            return None
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.limiter.retry_after(client, now)
        if wait > 0:
            return error(429, f"too many wrong tokens from this address; try again in {int(wait) + 1} s",
                         headers={"Retry-After": str(int(wait) + 1)})
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        given = (headers.get("authorization", "").removeprefix("Bearer ").strip() or headers.get("x-token")
                 or query)
        token = self.cfg.token
        assert token is not None  # _auth is only called when a token is configured
        if hmac.compare_digest(given.encode(), token.encode()):
            if query and not headers.get("authorization") and not headers.get("x-token"):
                started["cookie"] = self._open_session(now)
            return None
        self.daemon.count("auth_failures")
        if given and self.limiter.fail(client, now):
            self.daemon.count("auth_lockouts")
            log.warning("client %s locked out for %.0f s after %d wrong tokens", client, FAILURE_WINDOW_S,
                        MAX_FAILURES)
        return error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                          "or open the page once with ?token=TOKEN")

    def _valid_session(self, headers: Headers, now: float) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no session
            return False
        sid = cookie[SESSION_COOKIE].value if SESSION_COOKIE in cookie else ""
        expires = self.sessions.get(sid) if sid else None
        if expires is None or expires < now:
            return False
        return True

    def _open_session(self, now: float) -> str:
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + SESSION_TTL_S
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return f"{SESSION_COOKIE}={sid}; Path=/; Max-Age={SESSION_TTL_S}; HttpOnly; SameSite=Strict"

    def _limited(self, receive):
        """receive() that counts body bytes: a chunked body over the limit ends in 413, not a full spool."""
        seen = {"n": 0}
        limit, max_upload = self.max_body, self.max_upload

        async def limited():
            message = await receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > limit:
                    self.daemon.count("uploads_too_large")
                    raise HTTPException(413, f"upload exceeds the limit of {max_upload / 1e6:.1f} MB")
            return message

        return limited
