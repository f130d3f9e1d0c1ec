"""A hot folder: each new image file is inspected once, then moved to done/ or failed/ with a
sidecar JSON.

    <path>/part-17.png ─settled─▶ <path>/.processing/<claim>~part-17.png ─inspected─▶
        <done>/part-17.png + part-17.png.json      (the verdict as published)
        <failed>/part-17.png + part-17.png.json    (the error reply: Code and Message)

A file is read only once it is complete: its size and time stamp stayed the same for
`settleS` (and at least one scan interval), and a JPEG or PNG must end with its end marker
(EOI, IEND); an incomplete one is tried anyway after 10 × settleS (≥ 5 s), so a truncated
upload ends in failed/ (ImageUnreadable) instead of waiting forever. Names starting with a
dot or ending in .part, .partial, .tmp, .crdownload or ~ are skipped: writers that write
under such a name and rename at the end never show a partial file. Symbolic links are not
followed (failed/, PathRefused).

Guarantee (docs/capture.md): a file is claimed by renaming it into `.processing/` (atomic on
one file system); only claimed files are inspected and each claim is submitted once, so a
file is never inspected twice. If the process ends while files are in flight (at most
`maxInFlight`), those files are not inspected again at the next start: they go to failed/
with the code `Interrupted` (their verdict may or may not have been published). Every other
file is inspected exactly once, including the files that arrived while the service was down
(found by the first scan). A file answered `Busy` (the queue was full) stays claimed and is
submitted again.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.capture.intake import ErrorReply, Intake
from lfv_edge.capture.triggers import Trigger
from lfv_edge.errors import CaptureError
from lfv_edge.inspection.pipeline import ImageFile
from lfv_edge.service.config import FolderSourceConfig
from lfv_edge.service.messages import BUSY, INTERRUPTED, PATH_REFUSED, utc_timestamp
from lfv_edge.service.ports import InspectionRecord

logger = logging.getLogger(__name__)

PROCESSING = ".processing"
_SKIPPED_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", "~")
_MIN_INCOMPLETE_WAIT_S = 5.0
_BUSY_RETRY_S = 0.2
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def looks_complete(path: Path, size: int) -> bool:
    """False for a JPEG without its EOI marker or a PNG without its IEND chunk (still being
    written); True for anything else (other formats have no end marker to check)."""
    if size == 0:
        return False
    try:
        with path.open("rb") as file:
            head = file.read(8)
            file.seek(max(size - 64, 0))
            tail = file.read(64).rstrip(b"\x00")  # some writers pad to a block
    except OSError:
        return False
    if head.startswith(b"\xff\xd8"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(_PNG_END)
    return True


def unique_destination(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/<stem>~2<suffix>`, `~3`, … when that name is taken."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    number = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".json").exists():
        number += 1
        candidate = folder / f"{stem}~{number}{suffix}"
    return candidate


@dataclass(slots=True)
class _Seen:
    signature: tuple[int, int, int]  # size, mtime_ns, inode
    since: float  # time.monotonic() when it was first seen with this signature


@dataclass(slots=True)
class _Claim:
    name: str  # the file's name when it arrived
    path: Path  # in .processing/
    sequence: int
    request_id: str
    mtime: float
    retry_at: float = 0.0  # answered Busy: submit again at this time.monotonic()


class FolderSource:
    """Watches one folder (polling: works on every file system, network mounts included)."""

    def __init__(
        self, config: FolderSourceConfig, intake: Intake, *, on_error: ErrorReply | None = None
    ) -> None:
        self.config = config
        self.intake = intake
        self._on_error = on_error
        self._processing = config.path / PROCESSING
        self._seen: dict[str, _Seen] = {}
        self._ready: list[tuple[int, str]] = []  # settled at the last scan, not claimed yet
        self._claims: dict[int, _Claim] = {}  # by Sequence
        self._retry: list[_Claim] = []
        self._finished: queue.SimpleQueue[InspectionRecord | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._run = secrets.token_hex(3)
        self.inspected = 0  # moved to done/
        self.failed = 0  # moved to failed/
        self.interrupted = 0  # found in .processing/ at start

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Create the folders, settle what an earlier run left in flight, start watching.

        Raises:
            CaptureError: a folder cannot be created or is not writable.
        """
        config = self.config
        for folder in (config.path, config.done, config.failed, self._processing):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                msg = f"{config.id}: cannot create {folder}: {exc.strerror or exc}"
                raise CaptureError(msg) from exc
            if not os.access(folder, os.W_OK | os.X_OK):
                msg = f"{config.id}: {folder} is not writable by this user"
                raise CaptureError(msg)
        self._recover_interrupted()
        self._thread = threading.Thread(
            target=self._loop, name=f"lfv-folder-{config.id}", daemon=True
        )
        self._thread.start()
        logger.info("%s: watching %s (done: %s, failed: %s)", config.id, config.path,
                    config.done, config.failed)  # fmt: skip

    def stop(self, timeout_s: float) -> None:
        """Claim nothing more; give what is in flight `timeout_s` to finish and be moved."""
        self._stop_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._finished.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def finished(self, record: InspectionRecord, sequence: int) -> None:
        """The service answered one of our files (finish thread: enqueue only)."""
        del sequence  # the record carries it (Capture.Sequence)
        self._finished.put(record)

    def trigger(self, trigger: Trigger) -> None:
        """Folders are not triggered (files arriving are the triggers)."""
        del trigger

    def status_fields(self, reason: str | None = None) -> dict[str, object]:
        """The status message of this source."""
        fields: dict[str, object] = {
            "Source": self.config.id, "Type": "folder",
            "Status": "stopped" if self._stop.is_set() else "watching",
            "Path": str(self.config.path), "Inspected": self.inspected, "Failed": self.failed,
            "Interrupted": self.interrupted, "InFlight": len(self._claims),
        }  # fmt: skip
        if reason is not None:
            fields["Reason"] = reason
        return fields

    # --- the watcher thread ----------------------------------------------------------------

    def _loop(self) -> None:
        next_scan = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping and (not self._claims or time.monotonic() >= self._stop_deadline):
                self._unclaim_waiting()
                return
            timeout = 0.1 if stopping else max(next_scan - time.monotonic(), 0.0)
            try:
                record = self._finished.get(timeout=timeout)
            except queue.Empty:
                record = None
            try:
                if record is not None:
                    self._complete(record)
                    if not stopping:
                        self._claim_ready()  # a slot is free: the next settled file goes now
                elif not stopping and time.monotonic() >= next_scan:
                    self._resubmit_busy()
                    self._scan()
                    next_scan = time.monotonic() + self.config.poll_s
            except Exception:  # a bug or an odd file system must not end the watcher
                logger.exception("%s: watching %s failed; retrying", self.config.id,
                                 self.config.path)  # fmt: skip
                self._stop.wait(1.0)
                next_scan = time.monotonic() + self.config.poll_s

    def _unclaim_waiting(self) -> None:
        """Stopping: files answered Busy were not inspected; they go back to the folder."""
        for claim in self._retry:
            back = self.config.path / claim.name
            if not back.exists():
                try:
                    claim.path.rename(back)
                except OSError as exc:
                    logger.warning("%s: %s stays claimed: %s", self.config.id, claim.name, exc)
        self._retry = []

    def _scan(self) -> None:
        config = self.config
        now = time.monotonic()
        present: set[str] = set()
        ready: list[tuple[int, str]] = []  # (mtime_ns, name)
        with os.scandir(config.path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES):
                    continue
                if entry.is_symlink():
                    self._refuse_link(name)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue  # done/, failed/ and other folders
                present.add(name)
                stat = entry.stat(follow_symlinks=False)
                signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
                seen = self._seen.get(name)
                if seen is None or seen.signature != signature:
                    self._seen[name] = _Seen(signature, now)
                    continue
                stable_s = now - seen.since
                if stable_s < config.settle_s:
                    continue
                patience = max(10 * config.settle_s, _MIN_INCOMPLETE_WAIT_S)
                if stable_s < patience and not looks_complete(config.path / name, stat.st_size):
                    continue
                ready.append((stat.st_mtime_ns, name))
        for name in [n for n in self._seen if n not in present]:
            del self._seen[name]
        self._ready = sorted(ready)  # oldest first: arrival order
        self._claim_ready()

    def _claim_ready(self) -> None:
        """Claim settled files, oldest first, while this source has free slots."""
        while self._ready and self.intake.has_slot():
            mtime_ns, name = self._ready.pop(0)
            seen = self._seen.get(name)
            try:
                stat = (self.config.path / name).stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if seen is None or seen.signature != (stat.st_size, stat.st_mtime_ns, stat.st_ino):
                continue  # written again since the scan: it settles anew
            self._claim(name, mtime_ns / 1e9)

    def _claim(self, name: str, mtime: float) -> None:
        sequence = self.intake.next_sequence()
        claimed = self._processing / f"{self._run}-{sequence}~{name}"
        try:
            (self.config.path / name).rename(claimed)  # the claim: atomic, once
        except FileNotFoundError:
            self._seen.pop(name, None)  # gone meanwhile (another consumer took it)
            return
        self._seen.pop(name, None)
        claim = _Claim(name, claimed, sequence, f"{self.config.id}:{self._run}:{sequence}", mtime)
        self._claims[sequence] = claim
        self._submit(claim)

    def _submit(self, claim: _Claim) -> None:
        capture: dict[str, object] = {
            "Source": self.config.id, "Type": "folder", "Trigger": "file", "TriggerId": None,
            "File": claim.name, "FrameTimestamp": utc_timestamp(claim.mtime),
        }  # fmt: skip
        self.intake.submit(
            claim.request_id, ImageFile(claim.path), capture, sequence=claim.sequence
        )

    def _resubmit_busy(self) -> None:
        now = time.monotonic()
        waiting, self._retry = self._retry, []
        for claim in waiting:
            if claim.retry_at > now or not self.intake.has_slot():
                self._retry.append(claim)
                continue
            self._claims[claim.sequence] = claim
            self._submit(claim)

    def _complete(self, record: InspectionRecord) -> None:
        capture = record.reply_fields.get("Capture")
        sequence = capture.get("Sequence") if isinstance(capture, dict) else None
        claim = self._claims.pop(sequence, None) if isinstance(sequence, int) else None
        if claim is None:
            return
        if record.error_code == BUSY:
            claim.retry_at = time.monotonic() + _BUSY_RETRY_S
            self._retry.append(claim)
            return
        try:
            reply = json.loads(record.payload)
        except ValueError:
            reply = {"Reply": record.payload.decode("utf-8", "replace")}
        ok = record.error_code is None
        self._move(claim.path, claim.name, ok=ok, result=reply)

    def _move(self, source: Path, name: str, *, ok: bool, result: dict[str, object]) -> None:
        folder = self.config.done if ok else self.config.failed
        destination = unique_destination(folder, name)
        try:
            shutil.move(source, destination)  # a rename on one file system
        except OSError as exc:
            logger.error("%s: cannot move %s to %s: %s", self.config.id, source, destination,
                         exc.strerror or exc)  # fmt: skip
            return
        sidecar = {"Source": self.config.id, "File": name, "MovedTo": str(destination),
                   "MovedAt": utc_timestamp(), "Result": result}  # fmt: skip
        _write_json(destination.with_name(destination.name + ".json"), sidecar)
        if ok:
            self.inspected += 1
        else:
            self.failed += 1
            error = result.get("Error")
            code = error.get("Code") if isinstance(error, dict) else None
            logger.info("%s: %s → %s (%s)", self.config.id, name, destination, code)

    def _recover_interrupted(self) -> None:
        """Files an earlier run claimed and did not finish: failed/, code Interrupted."""
        for folder in (self.config.done, self.config.failed):
            for temporary in folder.glob(".*.json.tmp"):  # a sidecar cut short by a crash
                temporary.unlink(missing_ok=True)
        for path in sorted(self._processing.iterdir()):
            name = path.name.split("~", 1)[1] if "~" in path.name else path.name
            message = ("in flight when the service stopped; not inspected again (its verdict "
                       "may or may not have been published)")  # fmt: skip
            self.interrupted += 1
            error = {"Code": INTERRUPTED, "Message": message}
            self._move(path, name, ok=False, result={"RequestId": None, "Error": error})
            if self._on_error is not None:
                self._on_error(None, INTERRUPTED, f"{name}: {message}",
                               {"Source": self.config.id, "Type": "folder", "File": name})  # fmt: skip
        if self.interrupted:
            logger.warning("%s: %d file(s) were in flight when the service stopped: moved to "
                           "%s (Interrupted)", self.config.id, self.interrupted, self.config.failed)  # fmt: skip

    def _refuse_link(self, name: str) -> None:
        link = self.config.path / name
        claimed = self._processing / f"{self._run}-link~{name}"
        try:
            link.rename(claimed)
        except FileNotFoundError:
            return
        error = {"Code": PATH_REFUSED, "Message": "symbolic links are not followed"}
        self._move(claimed, name, ok=False, result={"RequestId": None, "Error": error})


def _write_json(path: Path, body: Mapping[str, object]) -> None:
    """Write atomically (a temporary name, then a rename): readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
        temporary.replace(path)
    except OSError as exc:
        logger.error("cannot write %s: %s", path, exc.strerror or exc)
