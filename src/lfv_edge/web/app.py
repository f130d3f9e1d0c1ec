"""The web view's routes, access rules and live stream; no sockets here (server.py has them).

    GET /                              the live page (assets/index.html)
    GET /assets/{app.js,style.css,favicon.svg}
    GET /healthz                       200 while the process serves HTTP
    GET /readyz                        200 ready, 503 with the reasons (model loading, broker away, stopping)
    GET /metrics                       Prometheus text format
    GET /api/status                    counters, readiness, transports, sources, the chart's timeline
    GET /api/model                     what `lfv-edge inspect` says about the model in use
    GET /api/inspections               the kept inspections' summaries, newest first
    GET /api/inspections/<n>           one summary with its reply
    GET /api/inspections/<n>/<thumb.jpg|overlay.jpg|original.jpg|reply.json>
    GET /api/events                    server-sent events: `inspection`, `stats`, `reset`

Routes are a fixed table: no URL reaches the filesystem (assets are read from the package
once, at start). Only GET and HEAD; a request with a body is refused (413). With a token,
every route needs `Authorization: Bearer <token>` or Basic auth with the token as password
(what browsers prompt for); without one (loopback only), the Host header must name a loopback
host, so a web page cannot reach the view through DNS rebinding.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lfv_edge.errors import ConfigError
from lfv_edge.service.config import is_loopback
from lfv_edge.service.stats import RateLimitedLog
from lfv_edge.web.backends import Backend, Timeline
from lfv_edge.web.history import History
from lfv_edge.web.metrics import WebGauges, WebMetrics

logger = logging.getLogger(__name__)

MAX_URL_BYTES = 2048
MIN_TOKEN_CHARS = 16
STATS_EVERY_S = 2.0
LIST_LIMIT = 10_000
# Everything the page needs comes from this server; no inline script or style, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/assets/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/assets/style.css": ("style.css", "text/css; charset=utf-8"),
    "/assets/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_INSPECTION = re.compile(
    r"/api/inspections/([0-9]{1,12})(?:/(thumb\.jpg|overlay\.jpg|original\.jpg|reply\.json))?"
)
_DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() also takes "²"
_PICTURE_TYPES = {"thumb.jpg": "thumb", "overlay.jpg": "overlay", "original.jpg": "original"}
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: status, body and headers (security headers are added by the server)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    cacheable: bool = False  # assets: the browser may keep them for a minute
    stream_after: int | None = None  # SSE: the server streams entries newer than this


def _text(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return Response(status, (text + "\n").encode(), headers=tuple(headers))


def _json(value: object, status: int = 200) -> Response:
    return Response(status, json.dumps(value, separators=(",", ":")).encode(), _JSON)


def read_token(path: Path) -> str:
    """The token in the first line of `path`.

    Raises:
        ConfigError: unreadable, empty, shorter than MIN_TOKEN_CHARS, or not printable ASCII
            (names `http.tokenFile`, never the token).
    """
    where = "http.tokenFile"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc}", key=where) from exc
    token = text.splitlines()[0].strip() if text.strip() else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{where}: the token in {path} is {len(token)} characters; at least "
            f"{MIN_TOKEN_CHARS} are required (e.g. `openssl rand -hex 24`)",
            key=where,
        )
    if not all(33 <= ord(c) < 127 for c in token) or ":" in token:
        raise ConfigError(
            f"{where}: the token in {path} must be printable ASCII without spaces or ':'",
            key=where,
        )
    mode = path.stat().st_mode
    if mode & 0o077:
        logger.warning(
            "http.tokenFile %s is readable by other users (mode %04o)", path, mode & 0o777
        )
    return token


class Access:
    """Who may ask: the token holder, or (without a token) requests naming a loopback host."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None
        self._denied_log = RateLimitedLog(30.0)

    @property
    def needs_token(self) -> bool:
        """True when every request needs the token."""
        return self._token is not None

    def refuse(self, headers: Mapping[str, str], client: str) -> Response | None:
        """None to let the request in, else the answer (401 or 403)."""
        if self._token is None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if host and is_loopback(name):
                return None
            return _text(403, "forbidden: this view answers only requests for a loopback host")
        if self._authorized(headers.get("authorization", "")):
            return None
        suppressed = self._denied_log.ready()
        if suppressed is not None:
            logger.warning("web view: refused a request without a valid token from %s "
                           "(%d more since the last warning)", client, suppressed)  # fmt: skip
        return _text(
            401,
            "unauthorized: send Authorization: Bearer <token> (or Basic auth, the token as password)",
            ("WWW-Authenticate", 'Bearer realm="lfv-edge"'),
            ("WWW-Authenticate", 'Basic realm="lfv-edge", charset="UTF-8"'),
        )

    def _authorized(self, header: str) -> bool:
        assert self._token is not None  # noqa: S101 - only called with a token
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credentials.encode(), self._token)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, colon, password = decoded.partition(b":")
            return bool(colon) and hmac.compare_digest(password, self._token)
        return False


@dataclass(slots=True)
class _Streams:
    limit: int
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class WebApp:
    """Answers requests from the history, the metrics and the backend."""

    def __init__(
        self,
        backend: Backend,
        history: History,
        metrics: WebMetrics,
        access: Access,
        *,
        timeline: Timeline | None = None,
        dropped: Callable[[], int] = lambda: 0,
        max_streams: int = 8,
    ) -> None:
        self.backend = backend
        self.history = history
        self.metrics = metrics
        self.access = access
        self.timeline = timeline or Timeline()
        self._dropped = dropped
        self._streams = _Streams(max_streams)
        self._assets = {
            route: (resources.files("lfv_edge.web").joinpath(f"assets/{name}").read_bytes(), kind)
            for route, (name, kind) in _ASSETS.items()
        }
        metrics.watch(backend.gauges, self.web_gauges)

    def web_gauges(self) -> WebGauges:
        """The web view's own numbers (for /metrics)."""
        entries, nbytes = self.history.size()
        with self._streams.lock:
            streams = self._streams.count
        return WebGauges(entries, nbytes, self._dropped(), streams)

    # --- requests --------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], client: str) -> Response:
        """The answer to one request head (`headers` with lower-case names)."""
        if method not in ("GET", "HEAD"):
            return _text(
                405, "method not allowed: this view only answers GET", ("Allow", "GET, HEAD")
            )
        if len(target) > MAX_URL_BYTES:
            return _text(414, f"URL longer than {MAX_URL_BYTES} bytes")
        refused = self.access.refuse(headers, client)
        if refused is not None:
            return refused
        if (
            headers.get("content-length", "0").strip() not in ("", "0")
            or "transfer-encoding" in headers
        ):
            return _text(413, "request bodies are not accepted")
        path, _, query = target.partition("?")
        if not _SAFE_PATH.fullmatch(path) or "//" in path or "/." in path:
            return _text(404, "not found")
        return self._route(path, query, headers)

    def _route(self, path: str, query: str, headers: Mapping[str, str]) -> Response:
        asset = self._assets.get(path)
        if asset is not None:
            return Response(200, asset[0], asset[1], cacheable=path != "/")
        if path == "/healthz":
            return _text(200, "ok")
        if path == "/readyz":
            reasons = self.backend.not_ready()
            return (
                _text(503, "not ready: " + "; ".join(reasons)) if reasons else _text(200, "ready")
            )
        if path == "/metrics":
            return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        if path == "/api/status":
            return _json(self.status())
        if path == "/api/model":
            return _json(self.backend.model())
        if path == "/api/inspections":
            limit = _query_int(query, "limit", self.history.max_entries)
            entries = self.history.recent(min(limit, LIST_LIMIT))
            return _json(
                {"Last": self.history.last_seq, "Inspections": [e.summary for e in entries]}
            )
        if path == "/api/events":
            after = _query_int(headers.get("last-event-id", ""), None, -1)
            if after < 0:
                after = _query_int(query, "after", self.history.last_seq)
            return Response(200, content_type="text/event-stream", stream_after=after)
        match = _INSPECTION.fullmatch(path)
        if match is not None:
            return self._inspection(int(match.group(1)), match.group(2))
        return _text(404, "not found")

    def _inspection(self, seq: int, part: str | None) -> Response:
        entry = self.history.get(seq)
        if entry is None:
            return _text(404, f"inspection {seq} is not (or no longer) kept")
        if part is None:
            try:
                reply = json.loads(entry.reply)
            except ValueError:
                reply = None
            return _json({"Summary": entry.summary, "Reply": reply})
        if part == "reply.json":
            return Response(200, entry.reply, _JSON)
        picture = entry.pictures.get(_PICTURE_TYPES[part])
        if picture is None:
            return _text(404, f"inspection {seq} has no {part}")
        return Response(200, picture, "image/jpeg", cacheable=True)

    def status(self) -> dict[str, object]:
        """The page's status panel (and the SSE `stats` event)."""
        entries, nbytes = self.history.size()
        return {
            **self.backend.status(),
            "History": {
                "Entries": entries,
                "Bytes": nbytes,
                "MaxEntries": self.history.max_entries,
                "MaxBytes": self.history.max_bytes,
                "Last": self.history.last_seq,
                "Dropped": self._dropped(),
            },
            "Timeline": self.timeline.samples(),
            "Time": time.time(),
        }

    # --- the live stream -------------------------------------------------------------------

    def open_stream(self) -> bool:
        """Take a stream slot (False: too many pages connected)."""
        with self._streams.lock:
            if self._streams.count >= self._streams.limit:
                return False
            self._streams.count += 1
            return True

    def close_stream(self) -> None:
        with self._streams.lock:
            self._streams.count -= 1

    def stream(self, after: int, write: Callable[[bytes], None]) -> None:
        """Write SSE events until the history closes or `write` fails (the page went away).

        A page that reconnects sends the id of the last entry it saw (`Last-Event-ID`) and
        gets what it missed that is still kept; one from before a restart (an id beyond
        ours) gets `reset` and reloads the list.
        """
        history = self.history
        write(b"retry: 2000\n\n")
        if after > history.last_seq:
            write(_event("reset", {"Last": history.last_seq}))
            after = history.last_seq
        write(_event("stats", self.status()))
        next_stats = time.monotonic() + STATS_EVERY_S
        while not history.closed:
            if history.wait_after(after, min(1.0, max(next_stats - time.monotonic(), 0.05))):
                for entry in history.after(after):
                    write(_event("inspection", entry.summary, entry.seq))
                    after = entry.seq
            if time.monotonic() >= next_stats:
                write(_event("stats", self.status()))
                next_stats = time.monotonic() + STATS_EVERY_S


def _event(kind: str, data: object, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _query_int(query: str, name: str | None, default: int) -> int:
    """`name`'s value in a query string (or the whole string when `name` is None)."""
    if name is None:
        value = query.strip()
    else:
        value = next(
            (part.partition("=")[2] for part in query.split("&") if part.partition("=")[0] == name),
            "",
        )
    return int(value) if _DIGITS.fullmatch(value) else default
