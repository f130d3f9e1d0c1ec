"""Kept images: what a source's `keep` policy asks for, on disk, within a byte and age budget.

    <capture.keep.dir>/<source>/<YYYYMMDD>/<HHMMSS.mmm>-<RequestId>.png          the original
                                           <HHMMSS.mmm>-<RequestId>.overlay.png  mask, verdict
                                           <HHMMSS.mmm>-<RequestId>.json         the reply

The observer only enqueues (a bounded queue of `_QUEUE` images; beyond it an image is not
kept, and counted): PNG encoding of a 1080p frame takes tens of milliseconds and must not
hold the service's finish thread. One writer thread encodes and writes, then applies the
retention rules, oldest files first:

* the total size of kept files stays ≤ `maxBytes`;
* files older than `maxAgeS` are deleted (checked at every write and once a minute);
* the disk keeps at least `minFreeBytes` free: before writing, old kept files are deleted
  until the new ones fit; if they still don't (something else filled the disk), the image
  is not kept (counted, logged) — keeping never fills the disk.

Only files this store wrote (names as above) are ever deleted; nothing outside `dir`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lfv_edge.errors import CaptureError
from lfv_edge.inspection.imaging import encode_png
from lfv_edge.inspection.overlay import render_overlay
from lfv_edge.service.config import KeepPolicy, KeepStoreConfig
from lfv_edge.service.ports import InspectionRecord
from lfv_edge.service.stats import RateLimitedLog

logger = logging.getLogger(__name__)

_QUEUE = 8
_STOP = object()
_AGE_CHECK_S = 60.0
_OVERLAY_MAX_WIDTH = 1280
_KEPT_NAME = re.compile(r"\d{6}\.\d{3}-.+\.(png|overlay\.png|json)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class _Kept:
    path: Path
    size: int
    mtime: float


def wanted(policy: KeepPolicy, record: InspectionRecord) -> bool:
    """Whether `policy` keeps this reply's image (errors are never kept: there is no verdict)."""
    if policy is KeepPolicy.NONE or record.inspection is None or record.pixels is None:
        return False
    return policy is KeepPolicy.ALL or record.inspection.verdict.is_anomalous


class ImageKeeper:
    """Writes kept images on its own thread and keeps the store within its budget."""

    def __init__(self, config: KeepStoreConfig) -> None:
        if config.dir is None:
            msg = "capture.keep.dir is not set"
            raise ValueError(msg)
        self.config = config
        self.root: Path = config.dir
        self._queue: queue.Queue[tuple[InspectionRecord, str] | object] = queue.Queue(_QUEUE)
        self._files: deque[_Kept] = deque()  # oldest first
        self._bytes = 0
        self._thread: threading.Thread | None = None
        self._full_log = RateLimitedLog(30.0)
        self.kept = 0
        self.skipped_busy = 0  # the writer was behind: not kept
        self.skipped_disk = 0  # no room within minFreeBytes: not kept
        self.deleted = 0

    def start(self) -> None:
        """Create the folder, index what earlier runs kept, start the writer.

        Raises:
            CaptureError: the folder cannot be created.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"capture.keep.dir: cannot create {self.root}: {exc.strerror or exc}"
            raise CaptureError(msg) from exc
        self._index()
        self._enforce(0)
        self._thread = threading.Thread(target=self._loop, name="lfv-keep", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Write what is queued (within `timeout_s`), then stop."""
        try:
            self._queue.put(_STOP, timeout=max(timeout_s, 0.1))
        except queue.Full:
            return
        if self._thread is not None:
            self._thread.join(timeout_s)

    def offer(self, record: InspectionRecord, source_id: str) -> None:
        """Keep this reply's image (finish thread: enqueue or count, never wait)."""
        try:
            self._queue.put_nowait((record, source_id))
        except queue.Full:
            self.skipped_busy += 1
            suppressed = self._full_log.ready()
            if suppressed is not None:
                logger.warning("kept images: the writer is behind; %d image(s) not kept",
                               self.skipped_busy)  # fmt: skip

    @property
    def total_bytes(self) -> int:
        """Bytes of kept files (as indexed and written by this store)."""
        return self._bytes

    # --- the writer thread ---------------------------------------------------------------

    def _loop(self) -> None:
        last_age_check = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=_AGE_CHECK_S)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            try:
                if isinstance(item, tuple):
                    self._write(*item)
                elif time.monotonic() - last_age_check >= _AGE_CHECK_S:
                    self._enforce(0)
                    last_age_check = time.monotonic()
            except Exception:  # a full or read-only disk must not end the writer
                logger.exception("kept images: writing failed")

    def _write(self, record: InspectionRecord, source_id: str) -> None:
        inspection, pixels = record.inspection, record.pixels
        if inspection is None or pixels is None:
            return
        rgb = record.channel_order == "rgb"
        image_rgb = pixels if rgb else pixels[:, :, ::-1]
        original = encode_png(pixels, rgb=rgb)
        width = min(int(pixels.shape[1]), _OVERLAY_MAX_WIDTH)
        overlay_rgb = render_overlay(image_rgb, inspection.verdict, source_id, width=width)
        overlay = encode_png(overlay_rgb)
        try:
            reply = json.loads(record.payload)
        except ValueError:
            reply = {}
        body = json.dumps(reply, indent=1, ensure_ascii=False).encode() + b"\n"
        moment = datetime.fromtimestamp(record.finished_at, tz=timezone.utc)
        folder = self.root / _safe(source_id) / moment.strftime("%Y%m%d")
        stem = (
            f"{moment.strftime('%H%M%S')}.{moment.microsecond // 1000:03d}-"
            + _safe(record.request_id or "none")[:120]
        )
        outputs = ((f"{stem}.png", original), (f"{stem}.overlay.png", overlay),
                   (f"{stem}.json", body))  # fmt: skip
        needed = sum(len(data) for _, data in outputs)
        if not self._make_room(needed):
            self.skipped_disk += 1
            suppressed = self._full_log.ready()
            if suppressed is not None:
                logger.warning("kept images: no room for %d bytes within minFreeBytes=%d on %s; "
                               "%d image(s) not kept", needed, self.config.min_free_bytes,
                               self.root, self.skipped_disk)  # fmt: skip
            return
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in outputs:
            path = folder / name
            temporary = folder / f".{name}.tmp"
            temporary.write_bytes(data)
            temporary.replace(path)
            self._files.append(_Kept(path, len(data), time.time()))
            self._bytes += len(data)
        self.kept += 1

    # --- retention ---------------------------------------------------------------------

    def _index(self) -> None:
        found: list[_Kept] = []
        for path in self.root.glob("*/*/*"):
            if _KEPT_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                stat = path.stat()
                found.append(_Kept(path, stat.st_size, stat.st_mtime))
        found.sort(key=lambda kept: (kept.mtime, kept.path.name))
        self._files = deque(found)
        self._bytes = sum(kept.size for kept in found)

    def _free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return 0

    def _make_room(self, needed: int) -> bool:
        """Delete the oldest kept files until `needed` more bytes fit every bound."""
        self._enforce(needed)
        within_budget = self._bytes + needed <= self.config.max_bytes
        return within_budget and self._free_bytes() - needed >= self.config.min_free_bytes

    def _enforce(self, needed: int) -> None:
        config = self.config
        oldest_allowed = time.time() - config.max_age_s if config.max_age_s > 0 else None
        free = self._free_bytes()
        while self._files:
            first = self._files[0]
            too_old = oldest_allowed is not None and first.mtime < oldest_allowed
            over_budget = self._bytes + needed > config.max_bytes
            low_disk = free - needed < config.min_free_bytes
            if not (too_old or over_budget or low_disk):
                break
            self._files.popleft()
            self._bytes -= first.size
            try:
                first.path.unlink()
                free += first.size
                self.deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("kept images: cannot delete %s: %s", first.path, exc)
        self._prune_empty_folders()

    def _prune_empty_folders(self) -> None:
        for folder in self.root.glob("*/*"):
            if folder.is_dir() and not folder.is_symlink():
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only succeeds when empty


def _safe(text: str) -> str:
    """A file-name-safe version of an id (letters, digits, _ . - only)."""
    cleaned = _UNSAFE.sub("_", text).strip(".")
    return cleaned or "_"
