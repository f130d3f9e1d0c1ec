"""Replies waiting for a broker: a bounded spool on disk (`DiskSpool`) or in memory (`MemorySpool`).

The MQTT transport keeps here the replies it produced while the broker was unreachable and
publishes them after it reconnects; an entry is removed once the broker acknowledged it.
On disk every entry is one file, written atomically (temporary file, fsync, rename, fsync of
the folder), so a crash or power cut leaves either the whole entry or nothing:

    <spoolDir>/
    ├── 00000000000000000042.reply   magic, header length, CRC-32, JSON header, payload
    └── .tmp-00000000000000000043    a write that never finished: removed when the spool opens

The spool is bounded by the bytes of its entries: when a new entry does not fit, the oldest
ones are dropped (returned to the caller, which counts and logs them). A reply larger than
the whole spool is refused with `TransportError`. No paho here; thread-safe.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lfv_edge.errors import TransportError

logger = logging.getLogger(__name__)

_MAGIC = b"LFVSPL01"
_PREFIX = struct.Struct(">8sII")  # magic, header length, CRC-32 of header + payload
_SUFFIX = ".reply"
_TMP_PREFIX = ".tmp-"
_SEQ_DIGITS = 20


@dataclass(frozen=True, slots=True)
class SpooledReply:
    """One reply waiting for the broker; `seq` orders entries (oldest first)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    correlation_data: bytes | None = None

    @property
    def size(self) -> int:
        """Bytes this entry counts against the spool's bound."""
        return len(self.payload) + len(self.topic) + len(self.correlation_data or b"")


@dataclass(frozen=True, slots=True)
class Appended:
    """What `append` did: the new entry and the sequence numbers it pushed out."""

    reply: SpooledReply
    dropped: tuple[int, ...]


class Spool(Protocol):
    """Where replies wait while the broker is unreachable."""

    durable: bool  # True when an appended entry survives a crash of this process
    dropped_total: int  # entries dropped because the spool was full, since it opened

    def append(
        self, topic: str, payload: bytes, qos: int, correlation_data: bytes | None
    ) -> Appended:
        """Keep a reply, dropping the oldest entries when it does not fit.

        Raises:
            TransportError: the reply alone is larger than the spool, or cannot be written.
        """
        ...

    def pending(self) -> list[int]:
        """Sequence numbers of the entries, oldest first."""
        ...

    def after(self, seq: int, limit: int) -> list[int]:
        """Up to `limit` sequence numbers greater than `seq`, oldest first."""
        ...

    def read(self, seq: int) -> SpooledReply | None:
        """The entry `seq`, or None when it is gone (or was corrupt, and is now removed)."""
        ...

    def remove(self, seq: int) -> None:
        """Forget an entry (the broker acknowledged it); unknown entries are ignored."""
        ...

    def __len__(self) -> int: ...

    @property
    def size_bytes(self) -> int:
        """Bytes of all entries."""
        ...


def _after(entries: Mapping[int, object], seq: int, limit: int) -> list[int]:
    # Entries at or below `seq` are the few handed to the broker and not yet acknowledged:
    # skipping them keeps a drain step O(in flight), not O(spool).
    found: list[int] = []
    for key in entries:
        if key > seq:
            found.append(key)
            if len(found) >= limit:
                break
    return found


class MemorySpool:
    """A bounded in-memory spool: survives broker outages, not a restart of the process."""

    durable = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.dropped_total = 0
        self._entries: OrderedDict[int, SpooledReply] = OrderedDict()
        self._bytes = 0
        self._next_seq = 1
        self._lock = threading.Lock()

    def append(
        self, topic: str, payload: bytes, qos: int, correlation_data: bytes | None
    ) -> Appended:
        with self._lock:
            reply = SpooledReply(self._next_seq, topic, payload, qos, correlation_data)
            if reply.size > self.max_bytes:
                raise TransportError(
                    f"a reply of {reply.size} bytes does not fit the spool ({self.max_bytes} bytes)"
                )
            self._next_seq += 1
            dropped: list[int] = []
            while self._bytes + reply.size > self.max_bytes and self._entries:
                seq, old = self._entries.popitem(last=False)
                self._bytes -= old.size
                dropped.append(seq)
            self.dropped_total += len(dropped)
            self._entries[reply.seq] = reply
            self._bytes += reply.size
            return Appended(reply, tuple(dropped))

    def pending(self) -> list[int]:
        with self._lock:
            return list(self._entries)

    def after(self, seq: int, limit: int) -> list[int]:
        with self._lock:
            return _after(self._entries, seq, limit)

    def read(self, seq: int) -> SpooledReply | None:
        with self._lock:
            return self._entries.get(seq)

    def remove(self, seq: int) -> None:
        with self._lock:
            old = self._entries.pop(seq, None)
            if old is not None:
                self._bytes -= old.size

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes


def encode_entry(reply: SpooledReply) -> bytes:
    """The file content of one spool entry."""
    header = json.dumps(
        {
            "topic": reply.topic,
            "qos": reply.qos,
            "correlationData": None
            if reply.correlation_data is None
            else base64.b64encode(reply.correlation_data).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode()
    crc = zlib.crc32(reply.payload, zlib.crc32(header))
    return _PREFIX.pack(_MAGIC, len(header), crc) + header + reply.payload


def decode_entry(seq: int, data: bytes) -> SpooledReply:
    """Parse one spool file.

    Raises:
        ValueError: not a complete, intact entry.
    """
    if len(data) < _PREFIX.size:
        msg = "shorter than the entry prefix"
        raise ValueError(msg)
    magic, header_length, crc = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        msg = "not a spool entry (bad magic)"
        raise ValueError(msg)
    header = data[_PREFIX.size : _PREFIX.size + header_length]
    payload = data[_PREFIX.size + header_length :]
    if len(header) != header_length or zlib.crc32(payload, zlib.crc32(header)) != crc:
        msg = "truncated or corrupt (CRC mismatch)"
        raise ValueError(msg)
    fields = json.loads(header)
    correlation = fields.get("correlationData")
    return SpooledReply(
        seq=seq,
        topic=str(fields["topic"]),
        payload=payload,
        qos=int(fields["qos"]),
        correlation_data=None if correlation is None else base64.b64decode(correlation),
    )


class DiskSpool:
    """A bounded spool of atomic files in one folder; entries survive restarts and crashes."""

    durable = True

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped_total = 0
        self._sizes: OrderedDict[int, int] = OrderedDict()  # seq → bytes counted
        self._bytes = 0
        self._next_seq = 1
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, max_bytes: int) -> DiskSpool:
        """Create or reopen the spool folder: remove unfinished writes, index the entries.

        Raises:
            TransportError: the folder cannot be created or read.
        """
        spool = cls(directory, max_bytes)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = sorted(entry.name for entry in directory.iterdir())
        except OSError as exc:
            raise TransportError(f"spool {directory}: {exc.strerror or exc}") from exc
        for name in names:
            path = directory / name
            if name.startswith(_TMP_PREFIX):
                path.unlink(missing_ok=True)  # a write interrupted by a crash
                continue
            stem = name.removesuffix(_SUFFIX)
            if not name.endswith(_SUFFIX) or not stem.isdigit():
                continue
            try:
                reply = decode_entry(int(stem), path.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("spool: removing unreadable entry %s: %s", path, exc)
                path.unlink(missing_ok=True)
                continue
            spool._sizes[reply.seq] = reply.size
            spool._bytes += reply.size
            spool._next_seq = max(spool._next_seq, reply.seq + 1)
        with spool._lock:
            dropped = spool._make_room(0)
        if dropped:
            logger.warning(
                "spool: dropped %d oldest entries over spoolMaxBytes=%d", len(dropped), max_bytes
            )
        if spool._sizes:
            logger.info(
                "spool: %d replies (%d bytes) from a previous run will be published",
                len(spool._sizes),
                spool._bytes,
            )
        return spool

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:0{_SEQ_DIGITS}d}{_SUFFIX}"

    def _make_room(self, size: int) -> list[int]:
        dropped: list[int] = []
        while self._bytes + size > self.max_bytes and self._sizes:
            seq, old = self._sizes.popitem(last=False)
            self._bytes -= old
            self._path(seq).unlink(missing_ok=True)
            dropped.append(seq)
        self.dropped_total += len(dropped)
        return dropped

    def _write_atomically(self, seq: int, data: bytes) -> None:
        tmp = self.directory / f"{_TMP_PREFIX}{seq:0{_SEQ_DIGITS}d}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self._path(seq))
        # The rename is durable only once the folder itself is on disk.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def append(
        self, topic: str, payload: bytes, qos: int, correlation_data: bytes | None
    ) -> Appended:
        with self._lock:
            reply = SpooledReply(self._next_seq, topic, payload, qos, correlation_data)
            if reply.size > self.max_bytes:
                raise TransportError(
                    f"a reply of {reply.size} bytes does not fit the spool ({self.max_bytes} bytes)"
                )
            self._next_seq += 1
            dropped = self._make_room(reply.size)
            try:
                self._write_atomically(reply.seq, encode_entry(reply))
            except OSError as exc:
                raise TransportError(
                    f"spool {self.directory}: cannot write a reply: {exc.strerror or exc}"
                ) from exc
            self._sizes[reply.seq] = reply.size
            self._bytes += reply.size
            return Appended(reply, tuple(dropped))

    def pending(self) -> list[int]:
        with self._lock:
            return list(self._sizes)

    def after(self, seq: int, limit: int) -> list[int]:
        with self._lock:
            return _after(self._sizes, seq, limit)

    def read(self, seq: int) -> SpooledReply | None:
        with self._lock:
            if seq not in self._sizes:
                return None
            path = self._path(seq)
            try:
                return decode_entry(seq, path.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("spool: removing unreadable entry %s: %s", path, exc)
                path.unlink(missing_ok=True)
                self._bytes -= self._sizes.pop(seq)
                return None

    def remove(self, seq: int) -> None:
        with self._lock:
            size = self._sizes.pop(seq, None)
            if size is None:
                return
            self._bytes -= size
            try:
                self._path(seq).unlink(missing_ok=True)
            except OSError as exc:  # a leftover file is republished once: a duplicate, not a loss
                logger.warning("spool: cannot remove entry %d: %s", seq, exc)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes
