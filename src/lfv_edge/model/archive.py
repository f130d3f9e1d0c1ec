"""Safe extraction of zipped model packages into a cache keyed by the zip's content hash.

A model package zip comes from outside (an S3 artifact, a USB stick); extracting it must not
write outside its folder or fill the disk. We refuse: absolute paths, `..` components, drive
letters, symbolic links, encrypted or duplicate members, more than `max_members` entries,
more than `max_total_bytes` uncompressed, and members whose compression ratio is that of a
zip bomb. Sizes declared in the zip are not trusted: we count the bytes as we write them.

    <cache dir>/packages/<sha256 of the zip>/      # $LFV_EDGE_CACHE_DIR or ~/.cache/lfv-edge
    ├── manifest.json
    └── mochi/ …

Extraction goes to a temporary sibling and is renamed into place, so a crash never leaves a
half-extracted package that looks complete. Pure stdlib: no dlr, no cv2.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lfv_edge.errors import ModelPackageError

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "LFV_EDGE_CACHE_DIR"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Limits against zip bombs. LFV packages are tens to a few hundred MB in a handful of files."""

    max_members: int = 1000
    max_total_bytes: int = 4 << 30
    # Ratio above which a member larger than `ratio_floor_bytes` is treated as a bomb.
    # Model weights compress ~1.1:1 and kernels ~3:1; 200:1 is only reached by crafted data.
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1 << 20


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$LFV_EDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/lfv-edge`, else `~/.cache/lfv-edge`."""
    if environ.get(CACHE_DIR_ENV):
        return Path(environ[CACHE_DIR_ENV])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lfv-edge"


def sha256_of(*paths: Path) -> str:
    """Hex sha256 of the files' contents, one after the other (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        msg = f"zip member {info.filename!r} has an absolute path"
        raise ModelPackageError(msg)
    parts = [part for part in name.split("/") if part not in {"", "."}]
    if any(part == ".." for part in parts):
        msg = f"zip member {info.filename!r} escapes the package folder ('..')"
        raise ModelPackageError(msg)
    if not parts:
        msg = f"zip member {info.filename!r} has an empty path"
        raise ModelPackageError(msg)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        msg = f"zip member {info.filename!r} is a symbolic link; packages must hold plain files"
        raise ModelPackageError(msg)
    if info.flag_bits & 0x1:
        msg = f"zip member {info.filename!r} is encrypted"
        raise ModelPackageError(msg)
    return PurePosixPath(*parts)


def check_zip(
    archive: zipfile.ZipFile, limits: ZipLimits
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every member's path and declared sizes before anything is written.

    Raises:
        ModelPackageError: names the first offending member and the rule it breaks.
    """
    members = archive.infolist()
    if len(members) > limits.max_members:
        msg = f"the zip has {len(members)} members, more than the limit of {limits.max_members}"
        raise ModelPackageError(msg)
    seen: set[str] = set()
    total = 0
    checked: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in members:
        relative = _safe_member_path(info)
        key = str(relative).lower()  # case-insensitive duplicates collide on some filesystems
        if key in seen:
            msg = f"zip member {info.filename!r} appears twice"
            raise ModelPackageError(msg)
        seen.add(key)
        total += info.file_size
        if total > limits.max_total_bytes:
            msg = f"the zip expands to more than {limits.max_total_bytes} bytes (zip bomb?)"
            raise ModelPackageError(msg)
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            msg = (
                f"zip member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1): refusing a likely zip bomb"
            )
            raise ModelPackageError(msg)
        checked.append((info, relative))
    return checked


def extract_zip(zip_path: Path, dest: Path, limits: ZipLimits) -> None:
    """Extract `zip_path` into the empty folder `dest`, enforcing `limits` while writing."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = check_zip(archive, limits)
            written_total = 0
            for info, relative in members:
                target = dest.joinpath(*relative.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(info) as source, target.open("wb") as out:
                    for chunk in iter(lambda: source.read(_CHUNK), b""):
                        written += len(chunk)
                        written_total += len(chunk)
                        # The header's file_size is attacker-controlled: trust only counted bytes.
                        if written > info.file_size or written_total > limits.max_total_bytes:
                            msg = f"zip member {info.filename!r} is larger than it declares (zip bomb?)"
                            raise ModelPackageError(msg)
                        out.write(chunk)
                target.chmod(0o644)
    except zipfile.BadZipFile as exc:
        msg = f"{zip_path.name} is not a valid zip file: {exc}"
        raise ModelPackageError(msg) from exc
    except (OSError, RuntimeError, NotImplementedError) as exc:
        msg = f"{zip_path.name}: extraction failed: {exc}"
        raise ModelPackageError(msg) from exc


def extract_package_zip(
    zip_path: Path,
    *,
    cache_dir: Path | None = None,
    limits: ZipLimits | None = None,
) -> Path:
    """Extract a package zip (once per content hash) and return the extracted folder.

    Raises:
        ModelPackageError: unsafe or corrupt zip, or the cache folder cannot be written.
    """
    limits = limits or ZipLimits()
    root = (cache_dir or default_cache_dir()) / "packages"
    digest = sha256_of(zip_path)
    final = root / digest
    if final.is_dir():
        logger.debug("package %s already extracted at %s", zip_path, final)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    except OSError as exc:
        msg = f"cannot create the package cache {root}: {exc} (set {CACHE_DIR_ENV})"
        raise ModelPackageError(msg) from exc
    try:
        extract_zip(zip_path, scratch, limits)
        try:
            scratch.rename(final)
        except OSError as exc:
            if not final.is_dir():  # else another process won the race: keep its copy
                msg = f"cannot move the extracted package into {final}: {exc}"
                raise ModelPackageError(msg) from exc
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info("extracted %s to %s", zip_path, final)
    return final
