"""POSIX shared memory for the Edge Agent API: images read from, masks written to `/dev/shm/<name>`.

A client creates a segment with `shm_open("/camera0", O_CREAT | O_RDWR, 0660)` (or by opening
`/dev/shm/camera0`, which is the same thing on Linux), writes packed RGB888 pixels and sends
`SharedMemoryHandle{name, size, offset}`. The agent opens the segment by name, checks that the
region lies inside it, and maps it read-only; pre-processing reads the pixels in place.

Deliberately not `multiprocessing.shared_memory`: its resource tracker records the segments a
process attaches to and may unlink them when the process exits; a server must never remove
a client's segment. Nothing here creates or unlinks segments.

Hazard shared by every mmap reader: if a client shrinks its segment while a call reads it,
the kernel raises SIGBUS in the agent. The size is checked just before mapping; clients must
not truncate a segment that has a call in flight.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.errors import InputError

SHM_DIR = Path("/dev/shm")  # noqa: S108 - where Linux keeps shm_open(3) segments, not a temp dir
# Stable InputError codes (all answered INVALID_ARGUMENT on the gRPC API).
SHM_NAME_INVALID = "SharedMemoryNameInvalid"
SHM_UNAVAILABLE = "SharedMemoryUnavailable"
SHM_REGION_INVALID = "SharedMemoryRegionInvalid"
_MAX_NAME = 255  # NAME_MAX of the tmpfs behind /dev/shm


@dataclass(frozen=True, slots=True)
class ShmRegion:
    """`size` bytes at `offset` of the POSIX shared memory segment `name`."""

    name: str
    size: int
    offset: int


def segment_path(name: str, shm_dir: Path = SHM_DIR) -> Path:
    """The file of a POSIX segment name: "/camera0" or "camera0" → /dev/shm/camera0.

    Raises:
        InputError: a name that is empty, too long or could reach outside `shm_dir`.
    """
    bare = name[1:] if name.startswith("/") else name
    if not bare or len(bare) > _MAX_NAME or "/" in bare or "\0" in bare or bare in {".", ".."}:
        msg = f"shared memory name {name!r} is not a POSIX segment name like '/camera0'"
        raise InputError(SHM_NAME_INVALID, msg)
    return shm_dir / bare


def _open_segment(region: ShmRegion, flags: int, shm_dir: Path) -> tuple[int, int]:
    """Open a segment; returns (fd, segment size)."""
    path = segment_path(region.name, shm_dir)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        msg = f"shared memory segment {region.name!r} does not exist"
        raise InputError(SHM_UNAVAILABLE, msg) from exc
    except OSError as exc:  # EACCES (permissions), ELOOP (a symlink), …
        msg = f"cannot open shared memory segment {region.name!r}: {exc.strerror or exc}"
        raise InputError(SHM_UNAVAILABLE, msg) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            msg = f"shared memory segment {region.name!r} is not a regular segment"
            raise InputError(SHM_UNAVAILABLE, msg)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def _check_region(region: ShmRegion, needed: int, segment_size: int, what: str) -> None:
    if region.offset + needed > segment_size:
        msg = (
            f"{what} needs bytes {region.offset}..{region.offset + needed} of shared memory "
            f"segment {region.name!r}, which is {segment_size} bytes"
        )
        raise InputError(SHM_REGION_INVALID, msg)


def map_image(region: ShmRegion, nbytes: int, shm_dir: Path = SHM_DIR) -> NDArray[np.uint8]:
    """A read-only view of the `nbytes` image bytes at the region (flat uint8).

    The mapping lives as long as the returned array (and views of it); the file descriptor
    is closed before returning.

    Raises:
        InputError: the region's size is not `nbytes`, the segment is missing or unreadable,
            or the region does not fit in it.
    """
    if region.size != nbytes:
        msg = (
            f"shared_memory_handle.size is {region.size} bytes; an RGB888 bitmap of this "
            f"width and height is exactly {nbytes} bytes (width × height × 3)"
        )
        raise InputError(SHM_REGION_INVALID, msg)
    fd, segment_size = _open_segment(region, os.O_RDONLY, shm_dir)
    try:
        _check_region(region, nbytes, segment_size, "the bitmap")
        # mmap offsets must be page-aligned: map from the page holding the region's start.
        start = region.offset - region.offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(
            fd, region.offset - start + nbytes, access=mmap.ACCESS_READ, offset=start
        )
    finally:
        os.close(fd)
    return np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=region.offset - start)


def write_region(region: ShmRegion, data: bytes | memoryview, shm_dir: Path = SHM_DIR) -> None:
    """Write `data` at the region's offset (e.g. a mask into the client's segment).

    Written with pwrite, not a mapping, so a segment shrunk underneath us is an error, not a
    SIGBUS.

    Raises:
        InputError: the region is smaller than `data`, the segment is missing or not
            writable, or the region does not fit in it.
    """
    needed = len(data)
    if region.size < needed:
        msg = (
            f"anomaly_mask_params.shared_memory_handle.size is {region.size} bytes; the mask "
            f"needs {needed} bytes (width × height × 3)"
        )
        raise InputError(SHM_REGION_INVALID, msg)
    fd, segment_size = _open_segment(region, os.O_RDWR, shm_dir)
    try:
        _check_region(region, needed, segment_size, "the mask")
        view = memoryview(data)
        written = 0
        while written < needed:
            count = os.pwrite(fd, view[written:], region.offset + written)
            if count <= 0:
                msg = f"could not write the mask into shared memory segment {region.name!r}"
                raise InputError(SHM_UNAVAILABLE, msg)
            written += count
    except OSError as exc:
        msg = f"cannot write shared memory segment {region.name!r}: {exc.strerror or exc}"
        raise InputError(SHM_UNAVAILABLE, msg) from exc
    finally:
        os.close(fd)
