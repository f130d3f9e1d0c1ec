"""The service's inbox: requests waiting for a prepare worker, bounded by count and by bytes.

    transport thread ──offer──▶ [ first `size` requests: in memory, any kind              ]
                                [ beyond: requests that can wait (MQTT QoS ≥ 1, IoT Core) ]
                                [   in memory up to `waiting_max_bytes` of payload,       ]
                                [   then spilled to disk up to `spill_max_bytes`          ]
                     ◀──get──── prepare workers, oldest first, memory and disk alike

A camera's burst is answered late rather than refused: a request that can wait is only
answered `Busy` when both budgets are spent. Requests that cannot wait (QoS 0, Greengrass
local pub/sub: nobody would hear a later answer any differently, and nothing bounds their
senders) keep the old rule: beyond `size`, the overflow policy picks the one answered `Busy`.

Why our own budget instead of the broker's flow control: mosquitto 2.0.11 (Debian's, the one
the tests use) does not hold deliveries at the client's MQTT 5 Receive Maximum (measured with
a window of 4: 4 before any acknowledgement, 4 more after each), and it drops what exceeds its
own `max_queued_messages` without telling anyone, so the broker cannot be relied on to keep a
burst. Waiting requests are not acknowledged until answered, so a crash means redelivery.

Spilled payloads live in `<spill_dir>/run-<pid>/<seq>` (0700); a start removes the folders of
processes that are gone. Nothing is spilled when the disk would keep less than `_KEEP_FREE`.
Threads: `offer` runs on transport threads, `get` on prepare workers; one lock guards all.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from lfv_edge.service.config import OverflowPolicy
from lfv_edge.service.ports import IncomingMessage

logger = logging.getLogger(__name__)

_KEEP_FREE = 512 << 20  # never fill the disk: spill only while this much stays free


@dataclass(slots=True)
class _Entry:
    message: IncomingMessage  # payload emptied while spilled
    size: int  # payload bytes
    spilled: Path | None = None


class SpillFolder:
    """Payloads of waiting requests on disk, one file each, in a folder of this process."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.folder = root / f"run-{os.getpid()}"
        self.bytes = 0
        self._seq = 0
        self._ready = False

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.root.glob("run-*"):
            pid = stale.name.removeprefix("run-")
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)  # its requests are redelivered or lost
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.folder.chmod(0o700)  # request payloads: ours alone (mkdir's mode obeys the umask)
        for leftover in self.folder.iterdir():  # a pid reused after a crash
            leftover.unlink(missing_ok=True)
        self._ready = True

    def room_for(self, size: int) -> bool:
        """Whether `size` more bytes fit the budget and keep the disk's reserve free."""
        if self.bytes + size > self.max_bytes:
            return False
        try:
            if not self._ready:
                self._prepare()
            return shutil.disk_usage(self.folder).free - size > _KEEP_FREE
        except OSError as exc:
            logger.warning("spill folder %s unusable: %s", self.root, exc)
            return False

    def write(self, payload: bytes) -> Path:
        """Store one payload. Raises OSError (the caller refuses the request then)."""
        self._seq += 1
        path = self.folder / f"{self._seq:012d}"
        with path.open("xb") as file:
            file.write(payload)
        self.bytes += len(payload)
        return path

    def read(self, path: Path, size: int) -> bytes:
        """Take one payload back (the file is removed)."""
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
            self.bytes -= size

    def discard(self, path: Path, size: int) -> None:
        path.unlink(missing_ok=True)
        self.bytes -= size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Inbox:
    """Requests waiting for a prepare worker (see the module docstring)."""

    def __init__(
        self, size: int, *, waiting_max_bytes: int = 0, spill: SpillFolder | None = None
    ) -> None:
        self.size = size
        self.waiting_max_bytes = waiting_max_bytes
        self.spill = spill
        self._entries: collections.deque[_Entry] = collections.deque()
        self._memory_bytes = 0  # payload bytes held in memory beyond the first `size` entries
        self._closed = False
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        self.peak_count = 0
        self.peak_memory_bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def memory_bytes(self) -> int:
        """Payload bytes of the waiting requests held in memory beyond `size`."""
        with self._lock:
            return self._memory_bytes

    @property
    def spilled_bytes(self) -> int:
        with self._lock:
            return self.spill.bytes if self.spill is not None else 0

    def offer(self, message: IncomingMessage, overflow: OverflowPolicy) -> IncomingMessage | None:
        """Take `message`; returns the request that must be answered `Busy` instead, if any."""
        size = len(message.payload)
        with self._lock:
            if self._closed:
                return message
            if len(self._entries) < self.size:
                self._append(_Entry(message, 0))  # the first `size` are not counted in bytes
                return None
            if message.can_wait:
                if self._memory_bytes + size <= self.waiting_max_bytes:
                    self._memory_bytes += size
                    self._append(_Entry(message, size))
                    return None
                if self.spill is not None and self.spill.room_for(size):
                    try:
                        path = self.spill.write(message.payload)
                    except OSError as exc:
                        logger.warning("spilling a waiting request failed: %s", exc)
                    else:
                        self._append(_Entry(replace(message, payload=b""), size, path))
                        return None
            if overflow is OverflowPolicy.DROP_OLDEST:
                oldest = self._pop_oldest_droppable()
                if oldest is not None:
                    self._append(_Entry(message, 0))
                    return oldest
            return message

    def _append(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self.peak_count = max(self.peak_count, len(self._entries))
        self.peak_memory_bytes = max(self.peak_memory_bytes, self._memory_bytes)
        self._available.notify()

    def _pop_oldest_droppable(self) -> IncomingMessage | None:
        if not self._entries:
            return None
        return self._materialise(self._entries.popleft())

    def _materialise(self, entry: _Entry) -> IncomingMessage:
        """The entry's message with its payload back in memory (lock held)."""
        if entry.spilled is not None and self.spill is not None:
            try:
                payload = self.spill.read(entry.spilled, entry.size)
            except OSError as exc:
                logger.error("a spilled request could not be read back: %s", exc)
                payload = b""  # answered as a BadRequest, with the request id unknown
            return replace(entry.message, payload=payload)
        self._memory_bytes -= entry.size
        return entry.message

    def get(self) -> IncomingMessage | None:
        """The oldest request (blocks); None once closed and empty."""
        with self._lock:
            while not self._entries:
                if self._closed:
                    return None
                self._available.wait()
            return self._materialise(self._entries.popleft())

    def close(self) -> None:
        """No more offers; `get` returns None to every worker once the rest is taken."""
        with self._lock:
            self._closed = True
            self._available.notify_all()

    def take_all(self) -> list[IncomingMessage]:
        """Remove and return everything still waiting (a stop that ran out of time)."""
        with self._lock:
            entries = list(self._entries)
            self._entries.clear()
            messages = [self._materialise(entry) for entry in entries]
            self._available.notify_all()
            return messages

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = size
