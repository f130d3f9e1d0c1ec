"""Capture sources show on the web view's page: each source's state and counters in /api/status."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from lfv_edge.web.view import WebView
from tests.capture.conftest import CaptureRunFactory


def test_each_capture_source_is_listed_with_its_state(
    capture_run: CaptureRunFactory, tmp_path: Path
) -> None:
    # given a service with two watched folders and the web view on a free loopback port
    inbox, other = tmp_path / "inbox", tmp_path / "other"
    inbox.mkdir()
    other.mkdir()
    run = capture_run({
        "sources": [{"type": "folder", "id": "inbox", "path": str(inbox)},
                    {"type": "folder", "id": "other", "path": str(other)}],
        "http": {"listen": "127.0.0.1:0"},
    })  # fmt: skip
    (view,) = [c for c in run.companions if isinstance(c, WebView)]
    # when the page asks for the status
    with urllib.request.urlopen(f"{view.url}api/status", timeout=10) as answer:  # noqa: S310 - loopback
        status = json.loads(answer.read())
    # then both sources are there, named, with their state and counters
    sources = {s["Name"]: s for s in status["Sources"]}
    assert set(sources) == {"inbox", "other"}, status["Sources"]
    assert sources["inbox"]["State"] == "watching"
    assert sources["inbox"]["Type"] == "folder"
    assert sources["inbox"]["Inspected"] == 0
