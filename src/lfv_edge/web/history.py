"""The last inspections, in memory, bounded by count and by bytes; what the page shows.

    History.add(Entry) ─▶ [seq 1 … seq N]  (oldest evicted first: beyond `max_entries`, or
        while the entries' bytes exceed `max_bytes`) ─▶ the page (/api/inspections, SSE)

An entry holds a JSON-ready summary, the reply as published (capped at `MAX_REPLY_BYTES`: a
larger one keeps its fields but not its mask) and up to three JPEGs (thumbnail, overlay,
preview). Its `nbytes` counts all of them plus `ENTRY_OVERHEAD_BYTES` for the Python objects,
so `max_bytes` bounds the history's memory, whatever the images are. Thread-safe; readers
wait on `wait_after` (the SSE streams) and are woken by `add` and `close`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_REPLY_BYTES = 64 << 10  # a reply with a 1080p mask is ~60 KB; masks are also in overlay.jpg
# Python objects of one entry besides its bytes: the dataclass, the summary dict and its
# strings, the OrderedDict node (~2.4 KiB measured with tracemalloc for a typical summary).
ENTRY_OVERHEAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Pictures:
    """The JPEGs of one inspection (each None when it could not be made)."""

    thumb: bytes | None = None  # overlay, ≤ 240 px: the page's list
    overlay: bytes | None = None  # mask over the image, ≤ 640 px: the detail view
    original: bytes | None = None  # the image as the model saw it, ≤ 640 px

    @property
    def nbytes(self) -> int:
        """Bytes of the three pictures."""
        return sum(len(p) for p in (self.thumb, self.overlay, self.original) if p is not None)

    def get(self, name: str) -> bytes | None:
        """A picture by its name: thumb, overlay, original."""
        value: bytes | None = (
            getattr(self, name) if name in ("thumb", "overlay", "original") else None
        )
        return value


@dataclass(frozen=True, slots=True)
class Entry:
    """One inspection as the page sees it."""

    summary: Mapping[str, object]  # JSON-ready; `Seq` is added by the history
    reply: bytes  # JSON, at most MAX_REPLY_BYTES
    pictures: Pictures = field(default_factory=Pictures)
    summary_bytes: int = 0  # size of the summary as JSON (for the bound)
    seq: int = 0

    @property
    def nbytes(self) -> int:
        """What this entry costs in memory, for the history's bound."""
        return len(self.reply) + self.pictures.nbytes + self.summary_bytes + ENTRY_OVERHEAD_BYTES


class History:
    """The last `max_entries` entries, at most `max_bytes` in all."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < ENTRY_OVERHEAD_BYTES:
            msg = (
                f"a history needs room for one entry, got {max_entries} entries, {max_bytes} bytes"
            )
            raise ValueError(msg)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._bytes = 0
        self._last = 0
        self.evicted = 0
        self._closed = False
        self._changed = threading.Condition()

    def add(self, entry: Entry) -> Entry:
        """Append (numbered), then evict the oldest until both bounds hold; returns it numbered."""
        with self._changed:
            self._last += 1
            numbered = Entry(
                {**entry.summary, "Seq": self._last},
                entry.reply,
                entry.pictures,
                entry.summary_bytes,
                self._last,
            )
            self._entries[numbered.seq] = numbered
            self._bytes += numbered.nbytes
            while len(self._entries) > self.max_entries or (
                self._bytes > self.max_bytes and len(self._entries) > 1
            ):
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                self.evicted += 1
            self._changed.notify_all()
            return numbered

    def get(self, seq: int) -> Entry | None:
        """The entry numbered `seq`, if still kept."""
        with self._changed:
            return self._entries.get(seq)

    def recent(self, limit: int) -> list[Entry]:
        """The newest `limit` entries, newest first."""
        with self._changed:
            newest = list(reversed(self._entries.values()))
        return newest[:limit]

    def after(self, seq: int) -> list[Entry]:
        """Entries newer than `seq`, oldest first (those already evicted are gone)."""
        with self._changed:
            return [entry for number, entry in self._entries.items() if number > seq]

    @property
    def last_seq(self) -> int:
        """The number of the newest entry ever added (0: none yet)."""
        with self._changed:
            return self._last

    def wait_after(self, seq: int, timeout_s: float) -> bool:
        """Block until an entry newer than `seq` exists (True) or `timeout_s` passed/closed."""
        with self._changed:
            return (
                self._changed.wait_for(lambda: self._last > seq or self._closed, timeout=timeout_s)
                and not self._closed
            )

    def close(self) -> None:
        """Wake every waiter for good (the server stops)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        """True after `close()`."""
        with self._changed:
            return self._closed

    def size(self) -> tuple[int, int]:
        """(entries, bytes) kept now."""
        with self._changed:
            return len(self._entries), self._bytes
