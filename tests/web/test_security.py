"""The web view's security: a token beyond loopback, loopback Host names without one, no path
reaches a file, bounded requests and connections, the same headers on every answer."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from lfv_edge.errors import ConfigError
from lfv_edge.service.config import parse_config
from lfv_edge.web.app import CONTENT_SECURITY_POLICY, read_token
from lfv_edge.web.server import MAX_HEAD_BYTES
from tests.web.conftest import WAIT_S, Live, http_get, raw_exchange

TOKEN = "s3cret-token-0123456789abcdef"  # noqa: S105 - a test token
ROUTES = ("/", "/assets/app.js", "/healthz", "/readyz", "/metrics", "/api/status",
          "/api/model", "/api/inspections", "/api/inspections/1/thumb.jpg")  # fmt: skip


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "web-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def exposed(make_live: Callable[..., Live], token_file: Path) -> Live:
    """The view on every interface (0.0.0.0), with a token."""
    return make_live(listen="0.0.0.0:0", tokenFile=str(token_file))


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()


def test_beyond_loopback_every_route_needs_the_token(exposed: Live) -> None:
    port = exposed.port
    for route in ROUTES:
        # without a token, or with a wrong one: 401, a challenge browsers answer with a prompt
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": _basic("wrong")}, {"Authorization": "Token " + TOKEN},
                        {"Authorization": "Bearer " + TOKEN[:-1]}):  # fmt: skip
            answer = http_get(port, route, headers)
            assert answer.status == 401, f"{route} with {headers}: {answer.status}"
            challenges = [v for k, v in answer.header_list if k.lower() == "www-authenticate"]
            assert 'Basic realm="lfv-edge", charset="UTF-8"' in challenges, challenges
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert b"lfv_edge" not in answer.body, "a refusal tells nothing about the service"
    # with the token as Bearer or as the Basic-auth password: answered
    assert http_get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert http_get(port, "/", {"Authorization": _basic(TOKEN)}).status == 200
    assert http_get(port, "/readyz", {"Authorization": f"bearer  {TOKEN} "}).status == 200
    head = http_get(port, "/api/events", {"Authorization": f"Bearer {TOKEN}"}, method="HEAD")
    assert head.status == 200, head
    assert head.headers["content-type"] == "text/event-stream", head.headers
    assert http_get(port, "/api/events", method="HEAD").status == 401


def test_beyond_loopback_without_a_token_file_is_refused_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.tokenFile: required when listening beyond"):
        parse_config({"http": {"listen": "0.0.0.0:8080"}})
    with pytest.raises(ConfigError, match=r"http\.tokenFile: required"):
        parse_config({"http": {"listen": "plant-gw.example:8080"}})
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    with pytest.raises(ConfigError, match="at least 16 are required") as caught:
        read_token(short)
    assert caught.value.key == "http.tokenFile"
    assert "tooshort" not in str(caught.value), "the token itself is never repeated"
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")


def test_on_loopback_without_a_token_only_loopback_host_names_are_answered(live: Live) -> None:
    port = live.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert http_get(port, "/api/status", {"Host": host}).status == 200, host
    # a page of another site resolving its own name to 127.0.0.1 (DNS rebinding) is refused
    for host in (f"attacker.example:{port}", "attacker.example", f"10.0.0.5:{port}"):
        answer = http_get(port, "/api/status", {"Host": host})
        assert answer.status == 403, (host, answer.status)
        assert b"Counters" not in answer.body


HOSTILE = (
    "/../../../../etc/passwd",
    "/assets/../../../../etc/passwd",
    "/assets/../../pyproject.toml",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/assets/%2e%2e%2fapp.js",
    "/assets/app.js%00.png",
    "//etc/passwd",
    "/assets//app.js",
    "/assets/",
    "/assets/index.html",
    "/api/inspections/1/../../../etc/passwd",
    "/api/inspections/-1",
    "/api/inspections/99999999999999999999",
    "/api/inspections/1/thumb.png",
    "/web/assets/app.js",
    "/lfv_edge/web/app.py",
    "/.git/config",
    "/api/inspections/1/reply.json/..",
)


def test_hostile_paths_reach_no_file(live: Live, part_requests: list[bytes]) -> None:
    live.transport.deliver(part_requests[0])
    live.wait_listed(1)
    for path in HOSTILE:
        answer = http_get(live.port, path)
        assert answer.status == 404, (path, answer.status, answer.body[:80])
        assert b"root:" not in answer.body
        assert b"[project]" not in answer.body
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # the same in bytes http.client would refuse to send: backslashes, NUL, absolute form
    for target in (
        b"/assets\\..\\..\\pyproject.toml",
        b"/assets/app.js\x00",
        b"http://x/etc/passwd",
    ):
        reply = raw_exchange(
            live.port,
            b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        status = reply.split(b"\r\n", 1)[0]
        assert status.split()[1] in (b"400", b"404"), (target, status)
        assert b"[project]" not in reply
    # what exists is answered
    assert http_get(live.port, "/api/inspections/1/thumb.jpg").status == 200
    assert http_get(live.port, "/assets/app.js").status == 200


def test_oversize_and_unexpected_requests_are_refused(live: Live) -> None:
    port = live.port
    assert http_get(port, "/" + "a" * 3000).status == 414
    big_header = {"X-Filler": "x" * (MAX_HEAD_BYTES + 10)}
    assert http_get(port, "/healthz", big_header).status == 431
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"y" * 200) for i in range(120))
    reply = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431"), reply[:60]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        answer = http_get(port, "/api/status", method=method, body=b"{}")
        assert answer.status == 405, (method, answer.status)
        assert answer.headers["allow"] == "GET, HEAD"
    answer = http_get(port, "/api/status", {"Content-Length": "5"}, body=b"12345")
    assert answer.status == 413, answer
    chunked = raw_exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )  # fmt: skip
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:60]
    garbage = raw_exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n")
    assert b" 400 " in garbage.split(b"\r\n", 1)[0], garbage[:60]
    assert http_get(port, "/healthz").status == 200, "the view still answers"


def test_connections_beyond_the_limit_are_answered_503(make_live: Callable[..., Live]) -> None:
    live = make_live(maxConnections=2)
    held = [socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) for _ in range(2)]
    try:
        for sock in held:  # each is being served (a thread waits for its request)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        answer = raw_exchange(live.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:60]
    finally:
        for sock in held:
            sock.close()

    def free() -> bool:
        return http_get(live.port, "/healthz").status == 200

    from tests.web.conftest import wait_until

    wait_until(free, "a slot is free once the held connections closed")


def test_every_answer_carries_the_security_headers(live: Live) -> None:
    for path in ("/", "/assets/style.css", "/metrics", "/nope", "/api/inspections/7"):
        answer = http_get(live.port, path)
        headers = answer.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["server"] == "lfv-edge", "no Python version in Server"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    page = http_get(live.port, "/").body.decode()
    assert "<script>" not in page, "no inline script (the policy would block it)"
    assert "style=" not in page, "no inline style"
    assert "http://" not in page, "nothing from elsewhere: works offline"
    assert "https://" not in page, "nothing from elsewhere: works offline"
