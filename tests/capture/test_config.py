"""The `sources` list and the `capture` section: one schema for files, flags and the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lfv_edge.cli import build_parser
from lfv_edge.commands.serve import build_config
from lfv_edge.errors import ConfigError
from lfv_edge.service.config import (
    CameraSourceConfig,
    FolderSourceConfig,
    KeepPolicy,
    Replay,
    ServiceConfig,
    TriggerFrame,
    camera_kind,
    flag_of,
    merge_config,
    parse_config,
    reference_table,
)
from lfv_edge.service.schema import reference_rows

BASE: dict[str, Any] = {"model": {"path": "m.zip"}}
CAMERA = {"type": "camera", "id": "cam1", "url": "rtsp://10.0.0.5/stream1", "fps": "5"}
FOLDER = {"type": "folder", "id": "in", "path": "/data/in"}


def _parse(raw: dict[str, Any], environ: dict[str, str] | None = None) -> ServiceConfig:
    return parse_config(merge_config(BASE, raw), environ or {})


def test_a_sources_list_parses_each_entry_as_its_type() -> None:
    config = _parse(
        {
            "sources": [
                FOLDER,
                {**CAMERA, "triggerFrame": "next", "keep": "anomalous", "maxInFlight": "3"},
                {"type": "camera", "id": "replay", "url": "file:///videos/line.mkv",
                 "replay": "every_frame", "loop": "true"},
            ],
            "capture": {"triggerTopic": "lfv/{thingName}/triggers", "keep": {"dir": "/kept"}},
        },
        {"AWS_IOT_THING_NAME": "line3"},
    )  # fmt: skip
    folder, camera, replay = config.sources
    assert isinstance(folder, FolderSourceConfig), folder
    assert folder.done == Path("/data/in/done"), "done/ defaults to inside the folder"
    assert folder.failed == Path("/data/in/failed"), "so does failed/"
    assert isinstance(camera, CameraSourceConfig), camera
    assert (camera.fps, camera.trigger_frame, camera.keep, camera.max_in_flight) == (
        5.0, TriggerFrame.NEXT, KeepPolicy.ANOMALOUS, 3,
    ), camera  # fmt: skip
    assert config.trigger_topic_of(camera) == "lfv/line3/triggers", "{thingName} expands"
    assert isinstance(replay, CameraSourceConfig), replay
    assert replay.replay is Replay.EVERY_FRAME, replay
    assert replay.loop is True, "booleans come as strings from Greengrass"
    assert [camera_kind(u) for u in ("/dev/video0", "rtsp://h/x", "http://h/m", "/v/a.mkv")] == [
        "device", "stream", "stream", "file",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("sources", "capture", "key", "text"),
    [
        ([{**CAMERA, "fsp": 5}], {}, "sources[0].fsp", "unknown key (known: id, url, fps"),
        ([FOLDER, {**FOLDER, "id": "x", "url": "rtsp://h"}], {}, "sources[1].url",
         "unknown key (known: id, path, doneDir"),
        ([{"id": "x", "url": "rtsp://h"}], {}, "sources[0].type", "required (one of camera, folder)"),
        ([{**CAMERA, "type": "usb"}], {}, "sources[0].type", "expected one of camera, folder"),
        ([FOLDER, {**FOLDER, "path": "/b"}], {}, "sources[1].id", "'in' is also sources[0]'s id"),
        ([{**CAMERA, "fps": "0"}], {}, "sources[0]", "a camera needs fps, intervalS or a trigger"),
        ([{**CAMERA, "keep": "all"}], {}, "sources[0].keep", "set capture.keep.dir"),
        ([{**CAMERA, "intervalS": "2"}], {}, "sources[0].intervalS", "exclude each other"),
        ([{**CAMERA, "loop": True}], {}, "sources[0].loop", "for video files"),
        ([{**CAMERA, "width": "1920"}], {}, "sources[0].width", "width and height go together"),
        ([{**CAMERA, "url": "ftp://h/x"}], {}, "sources[0].url", "unsupported scheme 'ftp'"),
        ([{**CAMERA, "url": "/dev/sda"}], {}, "sources[0].url", "a V4L2 device"),
        ([{**CAMERA, "id": "../x"}], {}, "sources[0].id", "letters, digits"),
        ([FOLDER, {**FOLDER, "id": "b"}], {}, "sources[1].path", "also sources[0]'s folder"),
        ("cam", {}, "sources", "expected a list of objects"),
        ([], {"triggerTopic": 5}, "capture.triggerTopic", "expected a string"),
        ([], {"statusTopic": "s/+"}, "capture.statusTopic", "wildcards"),
    ],
)  # fmt: skip
def test_errors_name_the_entry_and_key(
    sources: object, capture: dict[str, Any], key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _parse({"sources": sources, "capture": capture})
    assert text in str(raised.value), str(raised.value)
    assert raised.value.key == key, str(raised.value)


def test_one_source_from_serve_flags() -> None:
    # given serve's one-source flags (a documented shorthand for one `sources` entry each)
    argv = ["serve", "--model", "m.zip", "--broker", "mqtt://b", "--requests-topic", "r",
            "--results-topic", "res", "--camera", "rtsp://10.0.0.5/s", "--fps", "2.5",
            "--trigger-topic", "line/triggers", "--watch", "/data/in", "--keep-dir", "/kept"]  # fmt: skip
    config = build_config(build_parser().parse_args(argv), {})
    # then they build a camera and a folder source, with the ids the docs name
    kinds = {type(s).__name__: s for s in config.sources}
    camera, folder = kinds["CameraSourceConfig"], kinds["FolderSourceConfig"]
    assert isinstance(camera, CameraSourceConfig), camera
    assert (camera.id, camera.url, camera.fps) == ("cam1", "rtsp://10.0.0.5/s", 2.5), camera
    assert isinstance(folder, FolderSourceConfig), folder
    assert (folder.id, folder.path) == ("folder1", Path("/data/in")), folder
    assert config.capture.trigger_topic == "line/triggers", config.capture
    assert config.capture.keep.dir == Path("/kept"), config.capture


def test_a_bad_flag_value_names_the_flag() -> None:
    argv = ["serve", "--model", "m.zip", "--broker", "mqtt://b", "--requests-topic", "r",
            "--results-topic", "res", "--camera", "ftp://nope", "--fps", "1"]  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        build_config(build_parser().parse_args(argv), {})
    assert "(flag --camera)" in str(raised.value), str(raised.value)
    assert flag_of("sources[3].fps") == "--fps", "any entry's key maps to its flag"
    assert flag_of("sources[0].doneDir") is None, "keys without a flag"


def test_the_table_lists_each_kind_of_entry() -> None:
    paths = [row.path for row in reference_rows(ServiceConfig)]
    assert "sources[].type" in paths, paths
    assert "sources[].url (camera)" in paths, paths
    assert "sources[].settleS (folder)" in paths, paths
    assert "capture.keep.maxBytes" in paths, paths
    assert "| `sources[].path (folder)` | required | `--watch` |" in reference_table()
