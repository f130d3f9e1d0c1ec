"""Kept images: the policy, and the byte, age and free-disk bounds that keep the disk from filling."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.capture.keep import ImageKeeper, wanted
from lfv_edge.demo.synthetic_line import generate_sample
from lfv_edge.inspection.pipeline import Inspection, RawFrame
from lfv_edge.service.config import KeepPolicy, KeepStoreConfig, ModelConfig
from lfv_edge.service.messages import ModelIdentity
from lfv_edge.service.ports import InspectionRecord
from lfv_edge.service.wiring import load_inspector

MIB = 1 << 20


@pytest.fixture(scope="module")
def inspected(demo_model: Path) -> tuple[np.ndarray, Inspection]:
    """A defect frame (RGB) the demo package finds anomalous, and its inspection."""
    inspector = load_inspector(ModelConfig(path=demo_model))
    for seed in range(20):
        sample = generate_sample(seed=seed, surface="metal", defect="stain", size=(240, 320))
        inspection = inspector.inspect(RawFrame(sample.image_rgb, "rgb"))
        if inspection.verdict.is_anomalous:
            return sample.image_rgb, inspection
    pytest.fail("the demo package found none of 20 stains anomalous")


def _record(inspected: tuple[np.ndarray, Inspection], request_id: str) -> InspectionRecord:
    pixels, inspection = inspected
    payload = json.dumps({"RequestId": request_id, "Capture": {"Source": "cam1"}}).encode()
    return InspectionRecord(
        request_id=request_id, payload=payload, model=ModelIdentity("demo", "1"), source="cam1",
        received_at=time.perf_counter(), finished_at=time.time(), published=True,
        inspection=inspection, pixels=pixels, channel_order="rgb",
    )  # fmt: skip


def test_policy(inspected: tuple[np.ndarray, Inspection]) -> None:
    record = _record(inspected, "x")
    assert wanted(KeepPolicy.ANOMALOUS, record), "a scratch is anomalous: kept"
    assert wanted(KeepPolicy.ALL, record), "all"
    assert not wanted(KeepPolicy.NONE, record), "none"
    error = InspectionRecord(None, b"{}", ModelIdentity("m", "1"), "cam1", 0.0, 0.0, True)
    assert not wanted(KeepPolicy.ALL, error), "an error reply has no verdict to keep"


def test_each_kept_image_has_original_overlay_and_reply(
    inspected: tuple[np.ndarray, Inspection], tmp_path: Path
) -> None:
    keeper = ImageKeeper(KeepStoreConfig(dir=tmp_path, min_free_bytes=0))
    keeper.start()
    keeper.offer(_record(inspected, "part/7"), "cam1")
    keeper.stop(30.0)
    files = sorted(p.name.split("-", 1)[1] for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["part_7.json", "part_7.overlay.png", "part_7.png"], files
    assert keeper.total_bytes == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


def test_the_byte_budget_deletes_the_oldest_first(
    inspected: tuple[np.ndarray, Inspection], tmp_path: Path
) -> None:
    keeper = ImageKeeper(KeepStoreConfig(dir=tmp_path, max_bytes=MIB, min_free_bytes=0))
    keeper.start()
    keeper.stop(5.0)
    for n in range(12):  # what the writer thread does with each offered image, in order
        keeper._write(_record(inspected, f"r{n:02d}"), "cam1")
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk <= MIB, f"{on_disk} bytes kept, budget 1 MiB"
    kept = sorted(p.name.split("-", 1)[1] for p in tmp_path.rglob("*.json"))
    assert kept, "the newest are kept"
    assert kept[-1] == "r11.json", f"newest kept, oldest deleted: {kept}"
    assert "r00.json" not in kept, kept
    assert keeper.deleted > 0, "old files were deleted to make room"


def test_old_files_go_and_foreign_files_stay(
    inspected: tuple[np.ndarray, Inspection], tmp_path: Path
) -> None:
    day = tmp_path / "cam1" / "20260101"
    day.mkdir(parents=True)
    old = [day / f"101010.000-old.{ext}" for ext in ("png", "overlay.png", "json")]
    for path in old:
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 10 * 86400,) * 2)
    foreign = day / "notes.txt"
    foreign.write_text("not ours")
    os.utime(foreign, (time.time() - 10 * 86400,) * 2)
    keeper = ImageKeeper(KeepStoreConfig(dir=tmp_path, max_age_s=86400, min_free_bytes=0))
    keeper.start()
    keeper.stop(5.0)
    assert not any(path.exists() for path in old), "kept files older than maxAgeS are deleted"
    assert foreign.exists(), "a file the store did not write is never deleted"


def test_never_fills_the_disk(inspected: tuple[np.ndarray, Inspection], tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    keeper = ImageKeeper(KeepStoreConfig(dir=tmp_path, min_free_bytes=free + (1 << 30)))
    keeper.start()
    keeper.offer(_record(inspected, "r1"), "cam1")
    keeper.stop(30.0)
    assert list(tmp_path.rglob("*.png")) == [], "no room within minFreeBytes: nothing written"
    assert keeper.skipped_disk == 1, "and counted"
