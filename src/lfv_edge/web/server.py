"""The HTTP server of the web view: Python's `http.server`, one thread per connection, bounded.

Why the standard library: the view answers a handful of GET routes to a few browsers and a
Prometheus scraper; threads fit the rest of the process (no asyncio), and there is nothing
more to install on the device. What `http.server` leaves open is closed here:

* connections: at most `max_connections` at once; one more is answered 503 and closed;
* request heads: at most `MAX_HEAD_BYTES` (request line and headers; 431 beyond), no bodies;
* slow clients: a socket timeout of `IDLE_TIMEOUT_S` on every read and write (a stalled page
  loses its stream instead of holding a thread);
* headers: the security headers of app.py on every answer (errors included), no version in
  `Server`, request logs at DEBUG through `logging`, never on stderr.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from lfv_edge.errors import TransportError
from lfv_edge.web.app import SECURITY_HEADERS, Response, WebApp

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 << 10
IDLE_TIMEOUT_S = 20.0
_BUSY_BODY = b"too many connections, try again\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _HeadTooLarge(http.client.LineTooLong):
    """The request head went past MAX_HEAD_BYTES."""

    def __init__(self) -> None:
        super().__init__("request head")


class _BoundedReader:
    """The connection's input, allowing `budget` bytes per request head."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.budget = MAX_HEAD_BYTES

    def readline(self, limit: int = -1) -> bytes:
        allowed = self.budget + 1 if limit < 0 else min(limit, self.budget + 1)
        line = self._raw.readline(allowed)
        self.budget -= len(line)
        if self.budget < 0:
            raise _HeadTooLarge
        return line

    def read(self, size: int = -1) -> bytes:  # no bodies are read; kept for the interface
        return self._raw.read(min(size, max(self.budget, 0)) if size >= 0 else 0)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - delegates to the socket file
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: a page loads its thumbnails on a few connections
    server_version = "lfv-edge"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self._reader = _BoundedReader(self.rfile)  # type: ignore[arg-type]
        self.rfile = self._reader  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self._reader.budget = MAX_HEAD_BYTES
        try:
            super().handle_one_request()
        except _HeadTooLarge:
            self.close_connection = True
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", "GET"
            self._answer(Response(431, b"request head too large\n"), head_only=False)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - any other method: do_PUT, …
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            response = self.server.app.handle(
                self.command, self.path, headers, self.client_address[0]
            )
        except Exception:  # a bug in one route: answer 500, keep serving
            logger.exception("web view: %s %s failed", self.command, self.path[:200])
            response = Response(500, b"internal error (see the log)\n")
        if response.status >= 400 and response.status not in (401, 404):
            self.close_connection = True  # a refused request may have left a body unread
        if response.stream_after is not None:
            self._stream(response)
            return
        self._answer(response, head_only=self.command == "HEAD")

    def _answer(self, response: Response, *, head_only: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "max-age=60" if response.cacheable else "no-store")
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(response.body)

    def _stream(self, response: Response) -> None:
        app = self.server.app
        self.close_connection = True  # the stream ends with the connection
        if not app.open_stream():
            self._answer(Response(503, b"too many live pages connected\n"), head_only=False)
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return

            def write(data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()

            assert response.stream_after is not None  # noqa: S101 - checked by the caller
            app.stream(response.stream_after, write)
        except (ConnectionError, TimeoutError):
            pass  # the page went away
        finally:
            app.close_stream()

    def version_string(self) -> str:
        return self.server_version  # no Python version in `Server`

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, unsupported version): plain text, with
        # a status line even when the request line was too broken to name a version.
        self.close_connection = True
        self.request_version = "HTTP/1.1"
        text = f"{code} {message or HTTPStatus(code).phrase}\n".encode()
        with contextlib.suppress(ConnectionError, TimeoutError):
            self._answer(Response(code, text), head_only=False)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: ANN401 - http.server's signature
        logger.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: WebApp, max_connections: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:  # noqa: ANN401 - socketserver's types
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:  # noqa: ANN401
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ANN401
        # Called inside socketserver's `except Exception` (a handler bug, not a client's).
        logger.exception("web view: serving %s failed", client_address)  # noqa: LOG004


class WebServer:
    """Binds and serves `app` on a thread of its own: `start()`, `stop(timeout_s)`."""

    def __init__(self, app: WebApp, host: str, port: int, *, max_connections: int = 32) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.max_connections = max_connections
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the requested one, or the one chosen for 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """http://host:port/ of the page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind and serve.

        Raises:
            TransportError: the address cannot be bound (in use, not on this machine).
        """
        try:
            self._server = _Server((self.host, self.requested_port), self.app, self.max_connections)
        except OSError as exc:
            msg = f"http.listen {self.host}:{self.requested_port}: cannot listen: {exc.strerror or exc}"
            raise TransportError(msg) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="lfv-web-http", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop accepting, end the live streams, close the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        self.app.history.close()  # live streams return within a second
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
