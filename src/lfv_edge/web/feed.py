"""From finished replies to the page's history: the web view's `InspectionObserver`.

    finish thread ──observe()──▶ metrics (counters, histograms: µs) + backlog (bounded)
        ──▶ [lfv-web-pictures] summary, thumbnail, overlay, preview JPEGs ──▶ History

`observe` only counts and enqueues (the service's rule for observers). Pictures are made on
the feed's own thread, at most 640 px a side, so a 4K request costs the history what a VGA
one does. Decoded images are big (a 1080p frame is 6 MB), so at most `PIXEL_BACKLOG` waiting
records keep theirs; beyond that a reply is still listed, without pictures. When the
backlog itself is full (the thread is starved), replies are counted in metrics but not listed
(`dropped`). The Edge Agent's verdicts come in through `observe_agent_call`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from lfv_edge.inspection.imaging import (
    encode_jpeg,
    fit_within,
    swap_red_blue,
    to_three_channels,
)
from lfv_edge.inspection.overlay import blend_mask
from lfv_edge.inspection.pipeline import Inspection, Timings
from lfv_edge.inspection.postprocess import Verdict
from lfv_edge.service.messages import SCHEMA_VERSION, ModelIdentity, encode_verdict
from lfv_edge.service.ports import InspectionRecord
from lfv_edge.web.history import MAX_REPLY_BYTES, Entry, History, Pictures
from lfv_edge.web.metrics import WebMetrics

logger = logging.getLogger(__name__)

# Replies waiting for their pictures; each holds its reply (up to ~60 KB with a 1080p mask),
# so a starved thread holds at most ~15 MB of them.
BACKLOG = 256
PIXEL_BACKLOG = 4  # of which this many keep their decoded image
PREVIEW_SIDE = 640
THUMB_SIDE = 240
_JPEG_QUALITY = 82
PICTURES_NICE = 10  # niceness of the pictures thread (the process's own is 0)


class AgentCall(Protocol):
    """What the web view needs of an Edge Agent call (agent.server.CallSummary has it)."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Item:
    record: InspectionRecord
    latency_ms: float | None


def result_of(record: InspectionRecord) -> str:
    """anomalous, normal or error."""
    if record.inspection is None:
        return "error"
    return "anomalous" if record.inspection.verdict.is_anomalous else "normal"


def found_labels(verdict: Verdict) -> list[tuple[str, float, str]]:
    """(label, area fraction, colour) of each anomaly label with pixels in the mask."""
    if not verdict.anomalies:
        return []
    background = verdict.anomalies[0].name
    return [
        (a.name, a.pixel_anomaly.total_percentage_area, a.pixel_anomaly.color)
        for a in verdict.anomalies
        if a.name != background and a.pixel_anomaly.total_percentage_area > 0
    ]


class InspectionFeed:
    """Counts each reply into the metrics and turns it into a history entry, off the hot path."""

    def __init__(self, history: History, metrics: WebMetrics, *, images: bool = True) -> None:
        self.history = history
        self.metrics = metrics
        self.wants_pixels = images
        self.dropped = 0
        self._backlog: queue.Queue[_Item | None] = queue.Queue(maxsize=BACKLOG)
        self._lock = threading.Lock()
        self._with_pixels = 0
        self._thread: threading.Thread | None = None

    # --- the finish thread ----------------------------------------------------------------

    def observe(self, record: InspectionRecord) -> None:
        """Count the reply and queue it for the page; never blocks, never raises."""
        latency_ms = (time.perf_counter() - record.received_at) * 1000.0
        try:
            self._count(record, latency_ms)
            self._enqueue(record, latency_ms)
        except Exception:  # an observer must not disturb the service
            logger.exception("web view: reply %s not recorded", record.request_id)

    def _count(self, record: InspectionRecord, latency_ms: float | None) -> None:
        inspection = record.inspection
        verdict = inspection.verdict if inspection is not None else None
        self.metrics.count_reply(
            result=result_of(record),
            error_code=record.error_code,
            labels=[label for label, _, _ in found_labels(verdict)] if verdict else [],
            timings=inspection.timings if inspection is not None else None,
            latency_s=latency_ms / 1000.0 if latency_ms is not None else None,
            published=record.published,
        )

    def _enqueue(self, record: InspectionRecord, latency_ms: float | None) -> None:
        if record.pixels is not None:
            with self._lock:
                keep = self._with_pixels < PIXEL_BACKLOG
                if keep:
                    self._with_pixels += 1
            if not keep:
                record = replace(record, pixels=None)
        try:
            self._backlog.put_nowait(_Item(record, latency_ms))
        except queue.Full:
            self._release(record)
            with self._lock:
                self.dropped += 1

    def _release(self, record: InspectionRecord) -> None:
        if record.pixels is not None:
            with self._lock:
                self._with_pixels -= 1

    # --- the Edge Agent's calls (gRPC threads) --------------------------------------------

    def observe_agent_call(
        self, model_component: str, call: AgentCall, inspection: Inspection
    ) -> None:
        """An Edge Agent verdict (the agent's `on_verdict` hook); never raises."""
        try:
            identity = ModelIdentity(call.model_name, call.model_version)
            payload = encode_verdict(
                inspection,
                identity,
                head={"SchemaVersion": SCHEMA_VERSION, "RequestId": None, "Source": "EdgeAgent",
                      "ModelComponent": model_component},
                tail={"ImageSize": {"Width": call.width, "Height": call.height}},
                include_mask=False,
            )  # fmt: skip
            record = InspectionRecord(
                request_id=None,
                payload=payload,
                model=identity,
                source=f"agent:{model_component}",
                received_at=time.perf_counter() - inspection.timings.total_ms / 1000.0,
                finished_at=time.time(),
                published=True,
                inspection=inspection,
            )
            self._count(record, inspection.timings.total_ms)
            self._enqueue(record, inspection.timings.total_ms)
        except Exception:  # the client's call must not fail because of the page
            logger.exception("web view: agent verdict of %s not recorded", model_component)

    # --- the pictures thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start making entries."""
        self._thread = threading.Thread(target=self._work, name="lfv-web-pictures", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Finish the backlog (within `timeout_s`) and stop."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # a stuck thread: the join below gives up
            self._backlog.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        self._thread = None

    def drain(self, timeout_s: float) -> bool:
        """Block until the backlog is empty (tests, `demo --live`); True if it emptied."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._backlog.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _work(self) -> None:
        # Pictures are for people; inspections come first. A lower priority for this thread
        # (Linux: setpriority on a thread id) gives its CPU to the pipeline when cores are
        # busy; the backlog then keeps fewer images (PIXEL_BACKLOG), never the service slower.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PICTURES_NICE)
        while True:
            item = self._backlog.get()
            try:
                if item is None:
                    return
                try:
                    self.history.add(make_entry(item.record, item.latency_ms))
                except Exception:  # one bad picture must not stop the page
                    logger.exception("web view: entry for %s not made", item.record.request_id)
                finally:
                    self._release(item.record)
            finally:
                self._backlog.task_done()


# --- entries ------------------------------------------------------------------------------


def make_pictures(
    pixels: NDArray[np.uint8] | None, order: str, verdict: Verdict | None
) -> Pictures:
    """Thumbnail, overlay and preview JPEGs of one inspection (what exists of them).

    Everything is drawn in BGR, OpenCV's order, at preview size: scaling the decoded image
    down first and never copying a channel-reversed view keeps a 1080p request at ~5 ms
    (13 ms the naive way). Without the image (the Edge Agent, or a backlog too long to keep
    it) the mask alone is the overlay, when there is one.
    """
    if pixels is not None:
        preview = fit_within(to_three_channels(np.ascontiguousarray(pixels)), PREVIEW_SIDE)
        if order == "rgb":
            preview = swap_red_blue(preview)
        elif preview is pixels:  # not scaled: the service's array, never drawn on
            preview = preview.copy()
        original = encode_jpeg(preview, quality=_JPEG_QUALITY, rgb=False)
        if verdict is not None:
            blend_mask(preview, verdict, bgr=True)
        overlay = encode_jpeg(preview, quality=_JPEG_QUALITY, rgb=False)
        thumb = encode_jpeg(fit_within(preview, THUMB_SIDE), quality=_JPEG_QUALITY, rgb=False)
        return Pictures(thumb=thumb, overlay=overlay, original=original)
    if verdict is not None and verdict.mask is not None:
        mask = verdict.mask_rgb()
        assert mask is not None  # noqa: S101 - mask is not None
        preview = fit_within(mask, PREVIEW_SIDE)
        return Pictures(
            thumb=encode_jpeg(fit_within(preview, THUMB_SIDE), quality=_JPEG_QUALITY),
            overlay=encode_jpeg(preview, quality=_JPEG_QUALITY),
        )
    return Pictures()


def _capped_reply(payload: bytes, body: Mapping[str, object] | None) -> bytes:
    """The reply, or, over MAX_REPLY_BYTES, the reply without its mask (or a note)."""
    if len(payload) <= MAX_REPLY_BYTES:
        return payload
    if body is not None:
        trimmed = dict(body)
        result = trimmed.get("DetectAnomalyResult")
        if isinstance(result, dict) and "AnomalyMask" in result:
            mask = result["AnomalyMask"]
            size = len(mask) if isinstance(mask, str) else 0
            trimmed["DetectAnomalyResult"] = {
                **result,
                "AnomalyMask": f"(not kept by the web view: {size} characters; see overlay.jpg)",
            }
        text = json.dumps(trimmed).encode()
        if len(text) <= MAX_REPLY_BYTES:
            return text
    note = {"WebView": f"the reply was {len(payload)} bytes; only {MAX_REPLY_BYTES} are kept"}
    return json.dumps(note).encode()


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_entry(record: InspectionRecord, latency_ms: float | None) -> Entry:
    """The history entry of one reply: summary, capped reply, pictures."""
    try:
        body = json.loads(record.payload)
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else None
    inspection = record.inspection
    verdict = inspection.verdict if inspection is not None else None
    summary: dict[str, object] = {
        "RequestId": record.request_id,
        "Source": record.source,
        "Time": _iso(record.finished_at),
        "Result": result_of(record),
        "Published": record.published,
        "Model": {"Name": record.model.name, "Version": record.model.version},
        "LatencyMs": round(latency_ms, 2) if latency_ms is not None else None,
    }
    if verdict is not None and inspection is not None:
        height, width = inspection.image_size
        summary.update(
            Confidence=verdict.confidence,
            Score=verdict.score,
            Threshold=verdict.threshold,
            Anomalies=[
                {"Name": name, "Area": area, "Color": color}
                for name, area, color in found_labels(verdict)
            ],
            HasMask=verdict.mask is not None,
            TimingsMs=_timings(inspection.timings),
            ImageSize={"Width": width, "Height": height},
        )
    else:
        error = body.get("Error") if body is not None else None
        message = error.get("Message") if isinstance(error, dict) else None
        summary["Error"] = {"Code": record.error_code, "Message": message}
    pictures = make_pictures(record.pixels, record.channel_order, verdict)
    summary["Pictures"] = [
        name for name in ("thumb", "overlay", "original") if pictures.get(name) is not None
    ]
    summary_bytes = len(json.dumps(summary))
    return Entry(summary, _capped_reply(record.payload, body), pictures, summary_bytes)


def _timings(timings: Timings) -> dict[str, float]:
    return timings.to_dict()
