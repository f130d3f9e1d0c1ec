"""A camera source: a reader thread keeps the freshest frame; a worker turns triggers and ticks
into inspections.

    reader  (lfv-cam-<id>-read)  VideoStream.read() as fast as the camera delivers; keeps only
            the newest frame (FrameSlot), so a trigger never inspects a frame FFmpeg buffered
            earlier; stream lost → status `lost`, reconnect after 0.5 s, 1 s, 2 s, … ≤
            reconnectMaxS; a file: paced at its own frame rate (`realtime`) or handed over
            frame by frame (`every_frame`); its end → `ended` (or again from the start, `loop`)
    worker  (lfv-cam-<id>-work)  triggers first (the freshest frame, or the next one), then
            the free-running (`fps`) or periodic (`intervalS`) ticks: a tick while
            `maxInFlight` of this source's images are still in the pipeline is dropped and
            counted — the model cannot keep up, and a queue of old frames would only make
            every verdict later

Every inspection carries `Capture` (source, frame time stamp and index, the frame's age when
handed to the pipeline, what triggered it). Nothing here blocks a transport or service thread:
`trigger()` enqueues. The reader is the only thread touching its `VideoStream`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lfv_edge.capture.intake import ErrorReply, Intake, StatusSink
from lfv_edge.capture.stream import Frame, VideoStream, redact
from lfv_edge.capture.triggers import Trigger
from lfv_edge.errors import CaptureError
from lfv_edge.inspection.pipeline import RawFrame
from lfv_edge.service.config import CameraSourceConfig, Replay, TriggerFrame
from lfv_edge.service.messages import BUSY, NO_FRAME, utc_timestamp
from lfv_edge.service.stats import RateLimitedLog

logger = logging.getLogger(__name__)

_FIRST_RETRY_S = 0.5
_TRIGGER_QUEUE = 64  # triggers waiting for this camera's worker; more are answered Busy
_NEXT_FRAME_WAIT_S = 2.0  # `next`: at most this long (or 3 frame intervals) for a new frame
_STOP = object()

Opener = Callable[[CameraSourceConfig], VideoStream]


class FrameSlot:
    """The freshest frame (readers take it without waiting), and a frame-by-frame hand-over."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._latest: Frame | None = None
        self._taken = -1  # index of the last frame `take_after` handed out
        self.closed = False  # no frame will come any more (a file ended, the source stopped)

    def put(self, frame: Frame) -> None:
        with self._changed:
            self._latest = frame
            self._changed.notify_all()

    def latest(self) -> Frame | None:
        with self._changed:
            return self._latest

    def wait_captured_after(self, moment: float, timeout_s: float) -> Frame | None:
        """The first frame decoded at or after `moment` (time.monotonic()), or None."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self.closed
                    or (self._latest is not None and self._latest.captured_mono >= moment)
                ),
                timeout=timeout_s,
            )
            frame = self._latest
            return frame if frame is not None and frame.captured_mono >= moment else None

    def wait_newer(self, index: int, timeout_s: float) -> Frame | None:
        """A frame with an index above `index`, waiting up to `timeout_s`; else None."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.closed or (self._latest is not None and self._latest.index > index),
                timeout=timeout_s,
            )
            frame = self._latest
            return frame if frame is not None and frame.index > index else None

    def take_after(self, index: int, timeout_s: float) -> Frame | None:
        """`every_frame`: the frame after `index`, marked taken so the reader reads on."""
        frame = self.wait_newer(index, timeout_s)
        if frame is not None:
            with self._changed:
                self._taken = frame.index
                self._changed.notify_all()
        return frame

    def wait_taken(self, index: int, stop: threading.Event) -> None:
        """`every_frame`: the reader waits here until frame `index` was taken (or stop)."""
        with self._changed:
            while self._taken < index and not stop.is_set():
                self._changed.wait(0.2)

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


@dataclass(slots=True)
class CameraCounters:
    """What the status messages report."""

    frames_read: int = 0
    inspected: int = 0  # images handed to the pipeline
    dropped: int = 0  # ticks skipped: this source's earlier images were still in the pipeline
    triggers: int = 0
    no_frame: int = 0  # triggers answered NoFrame
    reconnects: int = 0


class CameraSource:
    """One camera (device, stream or file) turned into inspections."""

    def __init__(
        self,
        config: CameraSourceConfig,
        intake: Intake,
        *,
        on_status: StatusSink,
        on_error: ErrorReply,
        open_stream: Opener = VideoStream.open,
    ) -> None:
        self.config = config
        self.intake = intake
        self.counters = CameraCounters()
        self._on_status = on_status
        self._on_error = on_error
        self._open_stream = open_stream
        self._slot = FrameSlot()
        self._triggers: queue.Queue[Trigger | object] = queue.Queue(maxsize=_TRIGGER_QUEUE)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._status = "starting"
        self._stream_fps = 0.0
        self._size: tuple[int, int] | None = None  # (width, height)
        self._run = secrets.token_hex(3)  # request ids stay unique across restarts
        self._open_log = RateLimitedLog(60.0)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader and the worker; the camera is opened by the reader (with retries)."""
        for name, target in (("read", self._read_loop), ("work", self._work_loop)):
            thread = threading.Thread(
                target=target, name=f"lfv-cam-{self.config.id}-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float) -> None:
        """Stop both threads (the reader may be inside a read: it ends after `readTimeoutS`)."""
        self._stop.set()
        self._slot.close()
        with contextlib.suppress(queue.Full):  # the worker checks the stop event between triggers
            self._triggers.put_nowait(_STOP)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._status = "stopped"  # CaptureSources publishes the last status

    @property
    def status(self) -> str:
        """`starting`, `connected`, `lost`, `ended` or `stopped`."""
        with self._lock:
            return self._status

    # --- triggers (transport threads) -----------------------------------------------------

    def trigger(self, trigger: Trigger) -> None:
        """Inspect the freshest (or the next) frame for this trigger; never blocks."""
        try:
            self._triggers.put_nowait(trigger)
        except queue.Full:
            self._on_error(trigger.request_id, BUSY,
                           f"{self.config.id}: {_TRIGGER_QUEUE} triggers are already waiting",
                           self._capture_fields("topic", trigger.request_id))  # fmt: skip

    # --- reader ------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        config = self.config
        delay = _FIRST_RETRY_S
        index = -1
        while not self._stop.is_set():
            try:
                stream = self._open_stream(config)
            except CaptureError as exc:
                self._lost(str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, config.reconnect_max_s)
                self.counters.reconnects += 1
                continue
            except Exception as exc:
                logger.exception("%s: opening the camera failed", config.id)
                self._lost(f"{type(exc).__name__}: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, config.reconnect_max_s)
                continue
            self._stream_fps = stream.fps
            try:
                index, got_any, ended = self._read_frames(stream, index)
            finally:
                stream.release()
            if got_any:
                delay = _FIRST_RETRY_S
            if self._stop.is_set():
                break
            if config.kind == "file" and ended:
                if config.loop and got_any:
                    continue  # the file again from its start, without a pause
                self._set_status("ended")
                self._slot.close()
                return
            self._lost("the stream ended or stopped sending frames")
            self._stop.wait(delay)
            delay = min(delay * 2, config.reconnect_max_s)
            self.counters.reconnects += 1

    def _read_frames(self, stream: VideoStream, index: int) -> tuple[int, bool, bool]:
        """Read until the stream fails or ends; returns (last index, any frame read, ended)."""
        config = self.config
        every_frame = config.kind == "file" and config.replay is Replay.EVERY_FRAME
        period = 1.0 / stream.fps if config.kind == "file" and stream.fps > 0 else 0.0
        due = time.monotonic()
        got_any = False
        while not self._stop.is_set():
            pixels = stream.read()
            if pixels is None:
                return index, got_any, True
            index += 1
            frame = Frame(pixels, index, time.time(), time.monotonic())
            self._slot.put(frame)
            self.counters.frames_read += 1
            if not got_any:
                got_any = True
                self._size = (int(pixels.shape[1]), int(pixels.shape[0]))
                self._set_status("connected")
            if every_frame:
                self._slot.wait_taken(index, self._stop)
            elif period > 0:  # a file in real time: as a camera would deliver it
                due += period
                wait = due - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
                else:
                    due = time.monotonic()  # we fell behind: don't rush to catch up
        return index, got_any, False

    def _lost(self, reason: str) -> None:
        if self.status != "lost":
            logger.warning(
                "%s: camera %s lost: %s", self.config.id, redact(self.config.url), reason
            )
        else:
            suppressed = self._open_log.ready()
            if suppressed is not None:
                logger.info("%s: still reconnecting (%s)", self.config.id, reason)
        self._set_status("lost", reason)

    # --- worker ------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        config = self.config
        try:
            if config.kind == "file" and config.replay is Replay.EVERY_FRAME:
                self._replay_every_frame()  # until the file ends; triggers after that
            period = (
                1.0 / config.fps if config.fps > 0
                else config.interval_s if config.interval_s > 0 else None
            )  # fmt: skip
            if config.kind == "file" and config.replay is Replay.EVERY_FRAME:
                period = None
            trigger_name = "fps" if config.fps > 0 else "interval"
            due = time.monotonic() + (period or 0.0)
            last_index = -1
            while not self._stop.is_set():
                timeout = None if period is None else max(due - time.monotonic(), 0.0)
                try:
                    item = self._triggers.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP or self._stop.is_set():
                    return
                if isinstance(item, Trigger):
                    self._handle_trigger(item)
                    continue
                if period is None:
                    continue
                now = time.monotonic()
                late = int((now - due) // period) if now > due else 0
                due += period * (1 + late)
                self.counters.dropped += late  # ticks missed while a trigger was served
                if not self.intake.has_slot():
                    self.counters.dropped += 1
                    continue
                # Free-running inspects each frame at most once: wait (≤ one period) for a new one.
                frame = (
                    self._slot.wait_newer(last_index, period) if config.fps > 0
                    else self._slot.latest()
                )  # fmt: skip
                if frame is None or not self._fresh(frame):
                    continue
                last_index = frame.index
                self._submit(frame, trigger_name, None, None, time.perf_counter())
        except Exception:  # a bug here must be loud, and must not take the process down
            logger.exception("%s: the capture worker stopped", config.id)

    def _replay_every_frame(self) -> None:
        """Each frame of the file once, as fast as the pipeline takes them (triggers between)."""
        last_index = -1
        while not self._stop.is_set():
            try:
                item = self._triggers.get_nowait()
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, Trigger):
                self._handle_trigger(item)
            if not self.intake.wait_for_slot(0.2):
                continue
            frame = self._slot.take_after(last_index, 0.2)
            if frame is None:
                if self._slot.closed:
                    return
                continue
            last_index = frame.index
            self._submit(frame, "replay", None, None, time.perf_counter())

    def _handle_trigger(self, trigger: Trigger) -> None:
        self.counters.triggers += 1
        frame: Frame | None
        if self.config.trigger_frame is TriggerFrame.NEXT:
            wait = max(3.0 / self._stream_fps, 0.5) if self._stream_fps > 0 else _NEXT_FRAME_WAIT_S
            frame = self._slot.wait_captured_after(
                trigger.received_mono, min(wait, _NEXT_FRAME_WAIT_S)
            )
        else:
            frame = self._slot.latest()
        if frame is None or self.status != "connected" or not self._fresh(frame):
            self.counters.no_frame += 1
            why = "no frame yet" if frame is None else f"the camera is {self.status}"
            if frame is not None and self.status == "connected":
                why = f"the freshest frame is {time.monotonic() - frame.captured_mono:.1f} s old"
            self._on_error(trigger.request_id, NO_FRAME, f"{self.config.id}: {why}",
                           self._capture_fields("topic", trigger.request_id))  # fmt: skip
            return
        self._submit(frame, "topic", trigger.request_id, trigger.metadata, trigger.received_at)

    def _fresh(self, frame: Frame) -> bool:
        """A frame older than readTimeoutS is a camera that stalled without saying so."""
        if self.config.kind == "file":
            return True
        return time.monotonic() - frame.captured_mono <= self.config.read_timeout_s

    def _submit(
        self,
        frame: Frame,
        trigger: str,
        trigger_id: str | None,
        metadata: Mapping[str, object] | None,
        received_at: float,
    ) -> None:
        sequence = self.intake.next_sequence()
        capture = self._capture_fields(trigger, trigger_id)
        capture.update(
            FrameTimestamp=utc_timestamp(frame.captured_at),
            FrameIndex=frame.index,
            FrameAgeMs=round((time.monotonic() - frame.captured_mono) * 1000.0, 2),
        )
        request_id = trigger_id or f"{self.config.id}:{self._run}:{sequence}"
        self.counters.inspected += 1
        self.intake.submit(
            request_id, RawFrame(frame.pixels, "bgr"), capture, sequence=sequence,
            received_at=received_at, metadata=metadata,
        )  # fmt: skip

    def _capture_fields(self, trigger: str, trigger_id: str | None) -> dict[str, object]:
        return {"Source": self.config.id, "Type": "camera", "Trigger": trigger,
                "TriggerId": trigger_id}  # fmt: skip

    # --- status ------------------------------------------------------------------------------

    def _set_status(self, status: str, reason: str | None = None) -> None:
        with self._lock:
            changed = status != self._status
            self._status = status
        if not changed:
            return
        if status == "connected":
            logger.info("%s: camera %s connected (%s, %.1f fps)", self.config.id,
                        redact(self.config.url), self._size, self._stream_fps)  # fmt: skip
        self._on_status(self.status_fields(reason))

    def status_fields(self, reason: str | None = None) -> dict[str, object]:
        """The status message of this source (without the time stamp)."""
        counters = self.counters
        fields: dict[str, Any] = {
            "Source": self.config.id,
            "Type": "camera",
            "Status": self.status,
            "Url": redact(self.config.url),
            "FramesRead": counters.frames_read,
            "Inspected": counters.inspected,
            "Dropped": counters.dropped,
            "Triggers": counters.triggers,
            "NoFrame": counters.no_frame,
            "Reconnects": counters.reconnects,
        }
        if self._size is not None:
            fields["Width"], fields["Height"] = self._size
        if self._stream_fps > 0:
            fields["StreamFps"] = round(self._stream_fps, 2)
        if reason is not None:
            fields["Reason"] = reason
        return fields
