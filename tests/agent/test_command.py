"""`lfv-edge agent` as a process: serves the socket, SIGTERM → finish, remove the socket, exit 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lfv_edge.agent import edge_agent_pb2 as pb2
from tests.agent.conftest import make_stub, red_image

WAIT_S = 60


@contextlib.contextmanager
def _agent(*args: str) -> Iterator[subprocess.Popen[str]]:
    """The command in a child process; killed on the way out if a test left it running."""
    with subprocess.Popen(
        [sys.executable, "-m", "lfv_edge", "--log-level", "INFO", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def _read_until(stream: Iterator[str], needle: str) -> list[str]:
    """Lines of a pipe up to and including the first containing `needle` (a blocking read)."""
    seen: list[str] = []
    for line in stream:
        seen.append(line)
        if needle in line:
            return seen
    pytest.fail(f"{needle!r} never appeared; the process wrote: {''.join(seen)}")


def test_agent_command_serves_until_sigterm(classifier: Path, socket_dir: Path) -> None:
    # given the command with one model started at launch
    sock = socket_dir / "a.sock"
    with _agent(
        "--socket", f"unix://{sock}", "--model", f"parts={classifier}", "--start", "parts"
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        _read_until(process.stdout, "serving on")
        _read_until(process.stderr, "model parts RUNNING")
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = make_stub(channel)
            image = red_image(64, 64, 0.9)
            result = stub.DetectAnomalies(
                pb2.DetectAnomaliesRequest(
                    model_component="parts",
                    bitmap=pb2.Bitmap(width=64, height=64, byte_data=image.tobytes()),
                )
            ).detect_anomaly_result
        # when
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=WAIT_S)
        errors = process.stderr.read()
    # then
    assert result.is_anomalous, "the process served a verdict"
    assert code == 0, f"SIGTERM is a clean exit; stderr: {errors}"
    assert not sock.exists(), "the socket is removed"


def test_agent_command_reads_the_config_agent_section(
    classifier: Path, socket_dir: Path, tmp_path: Path
) -> None:
    # given a config file (agent section, limits) and a second model on the command line
    sock = socket_dir / "c.sock"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "agent": {
                    "socket": f"unix://{sock}",
                    "socketMode": "0600",
                    "models": {"a": str(classifier)},
                    "startModels": ["a"],
                },
                "limits": {"minImageSide": 80},
            }
        )
    )
    with _agent("--config", str(config), "--model", f"b={classifier}") as process:
        assert process.stdout is not None
        assert process.stderr is not None
        _read_until(process.stdout, "serving on")
        _read_until(process.stderr, "model a RUNNING")
        mode = sock.stat().st_mode & 0o777
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = make_stub(channel)
            models = stub.ListModels(pb2.ListModelsRequest()).models
            small = pb2.DetectAnomaliesRequest(
                model_component="a",
                bitmap=pb2.Bitmap(width=64, height=64, byte_data=bytes(64 * 64 * 3)),
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.DetectAnomalies(small)
        # when
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=WAIT_S)
    # then
    assert [(m.model_component, m.status) for m in models] == [
        ("a", pb2.RUNNING),
        ("b", pb2.STOPPED),
    ], "models from the config and the command line; only startModels started"
    assert mode == 0o600, f"socketMode from the config: {oct(mode)}"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "limits from the config"
    assert "minimum is 80" in str(refused.value.details()), f"{refused.value.details()}"
    assert code == 0, "SIGINT is a clean exit too"


def test_a_second_agent_on_the_same_socket_exits_1(classifier: Path, socket_dir: Path) -> None:
    # given a running agent
    sock = socket_dir / "b.sock"
    with _agent("--socket", str(sock), "--model", f"parts={classifier}") as first:
        assert first.stdout is not None
        _read_until(first.stdout, "serving on")
        # when
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "lfv_edge",
                "agent",
                "--socket",
                str(sock),
                "--model",
                f"p={classifier}",
            ],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        # then
        assert second.returncode == 1, f"refused: {second.stderr}"
        assert "another server is listening" in second.stderr, f"says why: {second.stderr}"
        assert sock.exists(), "the first agent's socket is untouched"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT_S) == 0, "the first agent still stops cleanly"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "no models"),
        (("--model", "parts"), "expected NAME=PACKAGE"),
        (("--model", "a=/x.zip", "--start", "b"), "not a configured model"),
    ],
    ids=["no-models", "bad-model", "unknown-start"],
)
def test_agent_command_usage_errors_exit_2(args: tuple[str, ...], expected: str) -> None:
    # when
    done = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "agent", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
        env={**os.environ},
    )
    # then
    assert done.returncode == 2, f"a configuration error: {done.stderr}"
    assert expected in done.stderr, f"says what is wrong: {done.stderr}"
