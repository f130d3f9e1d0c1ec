"""The CPU DLR runtime: fetch `libdlr.so` from PyPI's `dlr==1.6.0` wheel, verify it, find it.

The `dlr` 1.10.0 wheel we import is pure Python and carries no native library. LFV packages
bring their own `libdlr.so` in the stage folder; packages without one (ours, or a stage folder
copied without it) run on the CPU library of the `dlr==1.6.0` wheel, which set-up fetches into
a project-managed folder (never into git):

    <runtime dir>/                 # $LFV_EDGE_RUNTIME_DIR, else <sys.prefix>/share/lfv-edge/dlr-1.6.0
    ├── libdlr.so                  # zip member dlr-1.6.0.data/data/dlr/libdlr.so, sha256-checked
    └── SOURCE.json                # where it came from and both checksums

Set-up also writes DLR's own phone-home opt-out file next to the installed `dlr` package
(belt and braces: `runner.py` stubs the phone-home module out before `import dlr` anyway).
Does not import dlr.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.errors import RuntimeProvisionError
from lfv_edge.model.archive import sha256_of

logger = logging.getLogger(__name__)

DLR_WHEEL_REQUIREMENT = "dlr==1.6.0"
DLR_WHEEL_NAME = "dlr-1.6.0-py2.py3-none-manylinux1_x86_64.whl"
DLR_WHEEL_SHA256 = "cb9672db941537567005d6c5ea98a03ede8ca4c8f8c51db4fcfa49d83d3c75cf"
LIBDLR_MEMBER = "dlr-1.6.0.data/data/dlr/libdlr.so"
LIBDLR_SHA256 = "570d8e462cd1f4f6d997e150d6d0eea0026010098194bef62d1ad4f8e1196ca7"
# The 1.6.0 wheel's library registers only the CPU device API (docs/dlr-runtime.md §1).
CPU_ONLY_LIBDLR_SHA256 = frozenset({LIBDLR_SHA256})

RUNTIME_DIR_ENV = "LFV_EDGE_RUNTIME_DIR"
_PIP_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class CpuRuntime:
    """A verified CPU `libdlr.so` on disk."""

    library: Path
    sha256: str


def default_runtime_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the CPU runtime lives: `$LFV_EDGE_RUNTIME_DIR` or a folder inside this environment."""
    configured = environ.get(RUNTIME_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "lfv-edge" / "dlr-1.6.0"


def find_cpu_runtime(environ: Mapping[str, str] = os.environ) -> CpuRuntime | None:
    """The installed CPU runtime, or None when set-up has not fetched it."""
    library = default_runtime_dir(environ) / "libdlr.so"
    if not library.is_file():
        return None
    return CpuRuntime(library=library, sha256=sha256_of(library))


def require_cpu_runtime(environ: Mapping[str, str] = os.environ) -> CpuRuntime:
    """The installed CPU runtime; raises with the command that installs it when it is missing."""
    runtime = find_cpu_runtime(environ)
    if runtime is None:
        where = default_runtime_dir(environ) / "libdlr.so"
        msg = (
            f"no libdlr.so in the package and no CPU runtime at {where}; "
            "run `lfv-edge runtime install` (or scripts/setup) to fetch it from PyPI's dlr==1.6.0 wheel"
        )
        raise RuntimeProvisionError(msg)
    return runtime


def install_cpu_runtime(
    dest_dir: Path | None = None,
    *,
    wheel: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> CpuRuntime:
    """Fetch (or take from `wheel`) the dlr 1.6.0 wheel, verify it and extract `libdlr.so`.

    Idempotent: a verified library already in place is kept.

    Raises:
        RuntimeProvisionError: download failed, checksum mismatch, or no wheel for this machine.
    """
    target_dir = dest_dir if dest_dir is not None else default_runtime_dir(environ)
    target = target_dir / "libdlr.so"
    if target.is_file() and sha256_of(target) == LIBDLR_SHA256:
        logger.info("CPU runtime already installed at %s", target)
        _disable_dlr_phone_home_file()
        return CpuRuntime(library=target, sha256=LIBDLR_SHA256)
    if wheel is None and platform.machine() not in {"x86_64", "AMD64"}:
        msg = (
            f"PyPI has no dlr==1.6.0 wheel for {platform.machine()}; on this machine run "
            "packages that carry their own libdlr.so (LFV packages do), or pass --wheel"
        )
        raise RuntimeProvisionError(msg)
    with tempfile.TemporaryDirectory(prefix="lfv-edge-dlr-") as scratch:
        wheel_path = wheel if wheel is not None else _download_wheel(Path(scratch))
        wheel_sha = sha256_of(wheel_path)
        if wheel_sha != DLR_WHEEL_SHA256:
            msg = f"{wheel_path.name}: sha256 {wheel_sha} is not the dlr 1.6.0 wheel's {DLR_WHEEL_SHA256}"
            raise RuntimeProvisionError(msg)
        target_dir.mkdir(parents=True, exist_ok=True)
        partial = target_dir / "libdlr.so.partial"
        try:
            with (
                zipfile.ZipFile(wheel_path) as archive,
                archive.open(LIBDLR_MEMBER) as member,
                partial.open("wb") as out,
            ):
                shutil.copyfileobj(member, out)
        except (KeyError, zipfile.BadZipFile) as exc:
            msg = f"{wheel_path.name}: cannot read {LIBDLR_MEMBER}: {exc}"
            raise RuntimeProvisionError(msg) from exc
        lib_sha = sha256_of(partial)
        if lib_sha != LIBDLR_SHA256:
            partial.unlink()
            msg = f"libdlr.so from {wheel_path.name}: sha256 {lib_sha} != expected {LIBDLR_SHA256}"
            raise RuntimeProvisionError(msg)
        partial.chmod(0o755)
        partial.replace(target)
    source = {
        "requirement": DLR_WHEEL_REQUIREMENT,
        "wheel": DLR_WHEEL_NAME,
        "wheel_sha256": DLR_WHEEL_SHA256,
        "member": LIBDLR_MEMBER,
        "libdlr_sha256": LIBDLR_SHA256,
    }
    (target_dir / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    _disable_dlr_phone_home_file()
    logger.info("CPU runtime installed at %s", target)
    return CpuRuntime(library=target, sha256=LIBDLR_SHA256)


def _download_wheel(scratch: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(scratch), DLR_WHEEL_REQUIREMENT,
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"could not run pip to download {DLR_WHEEL_REQUIREMENT}: {exc}"
        raise RuntimeProvisionError(msg) from exc
    wheel_path = scratch / DLR_WHEEL_NAME
    if completed.returncode != 0 or not wheel_path.is_file():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        msg = f"pip download {DLR_WHEEL_REQUIREMENT} failed: " + " | ".join(tail)
        raise RuntimeProvisionError(msg)
    return wheel_path


def _disable_dlr_phone_home_file() -> None:
    """Write DLR's own opt-out so even a plain `import dlr` elsewhere in this venv stays quiet."""
    spec = importlib.util.find_spec("dlr")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    config = Path(next(iter(spec.submodule_search_locations))) / "counter" / "ccm_config.json"
    if not config.parent.is_dir():
        return
    try:
        config.write_text(json.dumps({"enable_phone_home": False}) + "\n")
    except OSError as exc:  # a read-only site-packages is fine: runner.py stubs the module anyway
        logger.warning("could not write %s: %s", config, exc)
