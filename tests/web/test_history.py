"""The history's bounds (count, bytes, measured memory) and the feed's backlog bounds."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace

import numpy as np

from lfv_edge.bench.inputs import FULL_HD, photo_rgb
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.service.messages import ModelIdentity, Request, encode_result
from lfv_edge.service.ports import InspectionRecord
from lfv_edge.web.feed import BACKLOG, PIXEL_BACKLOG, InspectionFeed, make_entry
from lfv_edge.web.history import ENTRY_OVERHEAD_BYTES, MAX_REPLY_BYTES, Entry, History, Pictures
from lfv_edge.web.metrics import WebMetrics
from tests.web.conftest import part_rgb


def _entry(picture_bytes: int) -> Entry:
    return Entry({"Result": "normal"}, b"{}", Pictures(thumb=b"x" * picture_bytes), 20)


def test_history_keeps_the_newest_within_both_bounds() -> None:
    # count bound
    history = History(max_entries=10, max_bytes=1 << 30)
    for _ in range(25):
        history.add(_entry(100))
    assert [e.seq for e in history.recent(100)] == list(range(25, 15, -1)), "newest first"
    assert history.get(15) is None, "evicted"
    assert history.evicted == 15
    assert [e.seq for e in history.after(22)] == [23, 24, 25]
    # byte bound: 100 KB pictures in 1 MiB
    history = History(max_entries=1000, max_bytes=1 << 20)
    for _ in range(40):
        history.add(_entry(100_000))
    entries, nbytes = history.size()
    per_entry = 100_000 + 2 + 20 + ENTRY_OVERHEAD_BYTES
    assert nbytes <= 1 << 20, nbytes
    assert entries == (1 << 20) // per_entry, (entries, nbytes)
    assert history.last_seq == 40


def _record(inspector: Inspector, pixels: np.ndarray, request_id: str) -> InspectionRecord:
    inspection = inspector.inspect(RawFrame(pixels, "rgb"))
    identity = ModelIdentity(inspector.package.name, inspector.package.version)
    payload = encode_result(
        Request(request_id, RawFrame(pixels, "rgb")), inspection, identity, include_mask=True
    )
    return InspectionRecord(
        request_id=request_id, payload=payload, model=identity, source="test", received_at=0.0,
        finished_at=1.8e9, published=True, inspection=inspection, pixels=pixels,
        channel_order="rgb",
    )  # fmt: skip


def test_the_history_of_1080p_inspections_stays_within_its_memory_bound(
    demo_inspector: Inspector,
) -> None:
    # given replies of 1080p images (a noisy photo: JPEGs larger than a real part's) with masks
    record = _record(demo_inspector, photo_rgb(FULL_HD), "hd-0")
    images = [photo_rgb(FULL_HD, seed=s) for s in range(4)]
    history = History(max_entries=200, max_bytes=2 << 20)
    make_entry(record, 12.5)  # first use imports lazily (numpy.ma: ~0.7 MB): not the history's
    # when 40 of them go through the feed's entry making into a history of 200 / 2 MiB
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(40):
        own = replace(
            record, pixels=images[i % 4], request_id=f"hd-{i}", payload=record.payload + b" "
        )  # each reply its own bytes, as in service
        history.add(make_entry(own, 12.5))
        del own
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # then the byte bound holds, and it is what the memory really holds
    entries, nbytes = history.size()
    assert nbytes <= 2 << 20, nbytes
    assert entries < 40, f"the byte bound binds first for 1080p noise ({entries} entries)"
    assert held <= 2 << 20, f"traced {held} bytes for a history bounded at 2 MiB"
    assert nbytes >= 0.8 * held, f"the accounting ({nbytes}) covers what is held ({held})"
    newest = history.recent(1)[0]
    assert len(newest.reply) <= MAX_REPLY_BYTES
    assert newest.pictures.thumb is not None
    assert newest.pictures.overlay is not None
    assert newest.pictures.original is not None


def test_the_feed_keeps_few_images_waiting_and_counts_what_it_drops(
    demo_inspector: Inspector,
) -> None:
    # given a feed whose pictures thread is not running (a starved thread)
    history = History(2 * BACKLOG, 256 << 20)
    feed = InspectionFeed(history, WebMetrics())
    pixels = part_rgb(1)
    record = _record(demo_inspector, pixels, "p")
    # when more replies come than its backlog holds (each with its own decoded image)
    for i in range(BACKLOG + 5):
        feed.observe(replace(record, request_id=f"p{i}", pixels=pixels.copy()))
    # then only PIXEL_BACKLOG of them keep their image, and the overflow is counted
    assert feed.dropped == 5, feed.dropped
    feed.start()
    assert feed.drain(60.0), "the backlog is worked off"
    feed.stop(5.0)
    with_pictures = [e for e in history.recent(BACKLOG) if e.pictures.original is not None]
    assert len(with_pictures) == PIXEL_BACKLOG, len(with_pictures)
    assert history.last_seq == BACKLOG, "every reply in the backlog is listed"
    listed = history.recent(1)[0].summary
    assert listed["Pictures"] == ["thumb", "overlay"], "beyond it: the mask alone"
