"""One capture source's door into the service: hand it an image, know what is still in flight.

    source ──submit(image, Capture fields)──▶ Service.submit (answered like any request:
        a verdict, or an error such as Busy, on the results topic)
    Service finish thread ──observer──▶ sources.py ──▶ Intake.finish(record) (frees the slot)

Each submitted image carries `Capture.Sequence`, the n-th image of this source since it
started: observers match a finished reply to its source and slot by it (RequestIds are the
trigger's, and a PLC may repeat one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from lfv_edge.inspection.pipeline import ImageSource
from lfv_edge.service.messages import Request
from lfv_edge.service.ports import IncomingMessage, InspectionRecord, ReplyRoute

# An error reply that is no inspection (NoFrame, a bad trigger, Interrupted): RequestId, code,
# message, the Capture object. Called from source threads; the callee only enqueues.
ErrorReply = Callable[[str | None, str, str, dict[str, object]], None]
StatusSink = Callable[[dict[str, object]], None]  # a source's status changed

# A reply the service never gave back (it cannot happen short of a dropped reply, which the
# service logs as an error) must not hold a slot forever: after this long it is forgotten.
_IN_FLIGHT_EXPIRY_S = 300.0


class Submitter(Protocol):
    """What an intake needs of the service (`Service.submit`)."""

    def submit(self, message: IncomingMessage) -> None:
        """Take a message from inside the process; never blocks."""
        ...


def capture_of(record: InspectionRecord) -> Mapping[str, object] | None:
    """The `Capture` object a reply carries, if a capture source produced it."""
    capture = record.reply_fields.get("Capture")
    return capture if isinstance(capture, Mapping) else None


class Intake:
    """Submits one source's images and counts the ones the service has not answered yet."""

    def __init__(
        self, source_id: str, service: Submitter, route: ReplyRoute, *, max_in_flight: int
    ) -> None:
        self.source_id = source_id
        self.max_in_flight = max_in_flight
        self._service = service
        self._route = route
        self._changed = threading.Condition()
        self._in_flight: dict[int, float] = {}  # Sequence → time.monotonic() when submitted
        self._sequence = 0
        self.submitted = 0
        self.answered = 0

    def next_sequence(self) -> int:
        """The Sequence the next submitted image will carry."""
        with self._changed:
            self._sequence += 1
            return self._sequence

    @property
    def in_flight(self) -> int:
        """Images submitted and not answered yet."""
        with self._changed:
            self._expire_locked()
            return len(self._in_flight)

    def has_slot(self) -> bool:
        """Fewer than `max_in_flight` images are in flight."""
        return self.in_flight < self.max_in_flight

    def wait_for_slot(self, timeout_s: float) -> bool:
        """Block until fewer than `max_in_flight` are in flight (True) or `timeout_s` passed."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._expire_locked() < self.max_in_flight, timeout=timeout_s
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing is in flight (True) or `timeout_s` passed."""
        with self._changed:
            return self._changed.wait_for(lambda: self._expire_locked() == 0, timeout=timeout_s)

    def submit(
        self,
        request_id: str,
        image: ImageSource,
        capture: dict[str, object],
        *,
        sequence: int,
        received_at: float | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        """Hand one image to the service; its reply carries `capture` as `Capture`.

        `received_at` (time.perf_counter()) is when the work was asked for, e.g. when the
        trigger arrived: the service's latency figures count from there.
        """
        capture["Sequence"] = sequence
        message = IncomingMessage(
            payload=b"",
            reply=self._route,
            request=Request(request_id, image, metadata=metadata),
            reply_fields={"Capture": capture},
            source=self.source_id,
            received_at=received_at if received_at is not None else time.perf_counter(),
        )
        with self._changed:
            self._in_flight[sequence] = time.monotonic()
            self.submitted += 1
        self._service.submit(message)

    def finish(self, sequence: int) -> bool:
        """The service answered image `sequence` (finish thread: quick). False if not ours."""
        with self._changed:
            if self._in_flight.pop(sequence, None) is None:
                return False
            self.answered += 1
            self._changed.notify_all()
            return True

    def _expire_locked(self) -> int:
        if self._in_flight:
            oldest = time.monotonic() - _IN_FLIGHT_EXPIRY_S
            for sequence in [s for s, at in self._in_flight.items() if at < oldest]:
                del self._in_flight[sequence]
        return len(self._in_flight)
