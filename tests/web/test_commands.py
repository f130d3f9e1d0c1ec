"""The web view from the command line: `demo --live`, `agent --http`, the `http` keys and flags."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from lfv_edge.agent import edge_agent_pb2_grpc as pb2_grpc
from lfv_edge.cli import main
from lfv_edge.demo.embedded import embedded_package
from lfv_edge.errors import ConfigError
from lfv_edge.service.config import parse_config, reference_table
from tests.mqtt.conftest import free_port
from tests.web.conftest import Process, http_get, part_rgb, wait_http, wait_until
from tests.web.test_metrics import scrape, value


def test_demo_live_streams_the_twelve_parts_into_the_page(
    launch: Callable[[list[str]], Process],
) -> None:
    # given `lfv-edge demo --live` (one command)
    port = free_port()
    demo = launch(["demo", "--live", "--http", f"127.0.0.1:{port}", "--interval", "0.3"])
    wait_http(port, demo)
    # then the page lists the twelve parts, with pictures
    wait_until(lambda: len(http_get(port, "/api/inspections").json()["Inspections"]) == 12,
               "twelve parts listed")  # fmt: skip
    listed = http_get(port, "/api/inspections").json()["Inspections"]
    ids = sorted(entry["RequestId"] for entry in listed)
    assert ids[0] == "01-metal-normal", ids
    assert ids[-1] == "12-pcb-scratch", ids
    assert {e["Source"] for e in listed} == {"demo line"}
    assert all(e["Pictures"] == ["thumb", "overlay", "original"] for e in listed), listed
    assert http_get(port, "/").status == 200
    assert "live view of lfv_demo_greengrass_model_component" in demo.text()
    assert f"http://127.0.0.1:{port}/" in demo.text()
    # and Ctrl-C / SIGTERM ends it cleanly
    assert demo.terminate() == 0, demo.text()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="lfvw-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_agent_http_shows_the_calls_verdicts_metrics_and_models(
    launch: Callable[[list[str]], Process], socket_dir: Path
) -> None:
    # given `lfv-edge agent` with the demo model and the web view
    sock = socket_dir / "agent.sock"
    port = free_port()
    agent = launch([
        "agent", "--socket", f"unix://{sock}", "--model", f"com.example.Demo={embedded_package()}",
        "--start", "com.example.Demo", "--http", f"127.0.0.1:{port}",
    ])  # fmt: skip
    wait_http(port, agent)
    wait_until(lambda: http_get(port, "/readyz").status == 200, "the agent is ready")
    wait_until(lambda: b"RUNNING" in http_get(port, "/api/model").body, "the model runs")
    # when a client calls DetectAnomalies twice
    image = part_rgb(2)
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        stub = pb2_grpc.EdgeAgentStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(2):
            stub.DetectAnomalies(
                pb2.DetectAnomaliesRequest(
                    model_component="com.example.Demo",
                    bitmap=pb2.Bitmap(width=320, height=320, byte_data=image.tobytes()),
                )
            )
    # then the page lists both verdicts (mask pictures: the agent keeps no images) …
    wait_until(lambda: len(http_get(port, "/api/inspections").json()["Inspections"]) == 2,
               "two verdicts listed")  # fmt: skip
    entry = http_get(port, "/api/inspections").json()["Inspections"][0]
    assert entry["Source"] == "agent:com.example.Demo", entry
    assert entry["Pictures"] == ["thumb", "overlay"], entry
    assert http_get(port, f"/api/inspections/{entry['Seq']}/overlay.jpg").status == 200
    # … /metrics counts the calls, and the model list says what runs
    families = scrape(port)
    verdicts = sum(
        value(families, "lfv_edge_replies_total", result=r) for r in ("anomalous", "normal")
    )
    assert verdicts == 2
    assert value(families, "lfv_edge_requests_received_total") == 2
    info = families["lfv_edge_model_info"].samples[0].labels
    assert info["component"] == "com.example.Demo", info
    assert info["status"] == "RUNNING", info
    assert agent.terminate() == 0, agent.text()


def test_http_keys_and_the_http_flag() -> None:
    config = parse_config({"http": {"listen": "8080"}}).http
    assert config is not None
    assert (config.host, config.port, config.loopback) == ("127.0.0.1", 8080, True)
    config = parse_config({"http": {"listen": "[::1]:9100", "historySize": "50"}}).http
    assert config is not None
    assert (config.host, config.port, config.history_size) == ("::1", 9100, 50)
    assert parse_config({"http": {"listen": 8081}}).http is not None, "a number (Greengrass)"
    assert parse_config({}).http is None, "off unless configured"
    for bad, message in (
        ("127.0.0.1:http", "expected an integer"),
        ("127.0.0.1:70000", "expected an integer"),
        ("a b:80", "expected PORT or HOST:PORT"),
        ("[::1]9000", r"expected \[IPv6\]:PORT"),
    ):
        with pytest.raises(ConfigError, match=message) as caught:
            parse_config({"http": {"listen": bad}})
        assert caught.value.key == "http.listen", caught.value.key
    with pytest.raises(ConfigError, match=r"http\.listen: required"):
        parse_config({"http": {"historySize": 10}})
    table = reference_table()
    assert "| `http.listen` | off | `--http` |" in table, "the README table has the http keys"


def test_serve_names_the_http_flag_in_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "serve", "--model", "m.zip", "--broker", "mqtt://127.0.0.1:1", "--requests-topic", "a",
        "--results-topic", "b", "--http", "0.0.0.0:8080",
    ])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "http.tokenFile: required when listening beyond loopback" in err, err
    assert "(flag --http-token-file)" in err, err


def test_the_component_zip_carries_the_page(tmp_path: Path) -> None:
    from lfv_edge.greengrass.build import build_component_zip

    repo = Path(__file__).resolve().parents[2]
    archive = build_component_zip(repo, tmp_path / "component.zip")
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
    for asset in ("index.html", "app.js", "style.css", "favicon.svg"):
        assert f"src/lfv_edge/web/assets/{asset}" in names, asset
    pyproject = (repo / "pyproject.toml").read_text()
    assert '"web/assets/*"' in pyproject, (
        "package data: wheels and the component's install carry them"
    )
