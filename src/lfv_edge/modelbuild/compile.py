"""Compile kernels.c into the kernel `.so` of a DLR model folder, cached by content hash.

The cache key is the sha256 of the C source, the gcc command line and `gcc --version`, so an
edit to the kernels, the flags or the compiler rebuilds, and anything else reuses the file:

    <cache dir>/                      # $LFV_EDGE_KERNEL_CACHE, else $XDG_CACHE_HOME/lfv-edge/kernels,
    └── lfv_kernels-<key16>.so        #   else ~/.cache/lfv-edge/kernels

Compiled libraries are build products: never commit them. Does not import dlr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lfv_edge.modelbuild import BuildError

KERNELS_SOURCE = Path(__file__).with_name("kernels.c")
ABI_HEADER = "tvm_abi.h"  # included by kernels.c: part of the cache key
CACHE_ENV = "LFV_EDGE_KERNEL_CACHE"
# -fvisibility=hidden + explicit default visibility exports only the kernels and hooks;
# --no-undefined fails the link instead of dlopen when a symbol is missing (docs/dlr-runtime.md §6).
# -O3 rather than -O2: gcc 12 vectorises the convolution row loops fully only at -O3.
# -fno-trapping-math lets gcc if-convert float selects (clamps, max) into vector blends; the
# channel softmax runs 3x faster. Results are unchanged: nothing reads FP exception flags.
CFLAGS = (
    "-shared", "-fPIC", "-O3", "-fno-trapping-math", "-Wall", "-Wextra", "-Werror",
    "-fvisibility=hidden", "-Wl,--no-undefined",
)  # fmt: skip
LIBS = ("-lm",)
_COMPILE_TIMEOUT_S = 300


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where compiled kernels are cached: `$LFV_EDGE_KERNEL_CACHE`, else the XDG cache."""
    configured = environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lfv-edge" / "kernels"


def tool_version(tool: str, missing: str) -> str:
    """`tool --version`'s output (part of a build's cache key).

    Raises:
        BuildError: the tool is not on PATH (the message is `missing`), or `--version` fails.
    """
    if shutil.which(tool) is None:
        raise BuildError(missing)
    try:
        completed = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"could not run {tool} --version: {exc}"
        raise BuildError(msg) from exc
    if completed.returncode != 0:
        msg = f"{tool} --version failed (exit {completed.returncode}): {completed.stderr.strip()}"
        raise BuildError(msg)
    return completed.stdout


def compile_kernels(
    dest: Path | None = None,
    *,
    source: Path | None = None,
    cache_dir: Path | None = None,
    compiler: str = "gcc",
    environ: Mapping[str, str] = os.environ,
) -> Path:
    """Compile the kernels (once per source/flags/compiler) and return the `.so` path.

    Args:
        dest: copy the library to this file and return it; None returns the cached file.
        source: the C source (default: this package's kernels.c).
        cache_dir: overrides `default_cache_dir()`.
        compiler: the gcc executable.
        environ: where `LFV_EDGE_KERNEL_CACHE` / `XDG_CACHE_HOME` are read.

    Raises:
        BuildError: the compiler is missing or fails (the message carries gcc's stderr).
    """
    source_path = source if source is not None else KERNELS_SOURCE
    try:
        code = source_path.read_bytes()
    except OSError as exc:
        msg = f"cannot read the kernel source {source_path}: {exc}"
        raise BuildError(msg) from exc
    version = tool_version(
        compiler,
        f"the C compiler {compiler!r} was not found on PATH; install gcc "
        "(e.g. `apt-get install gcc`) to build test and demo models",
    )
    header = (KERNELS_SOURCE.parent / ABI_HEADER).read_bytes()
    digest = hashlib.sha256()
    for part in (code, header, "\0".join((compiler, *CFLAGS, *LIBS)).encode(), version.encode()):
        digest.update(hashlib.sha256(part).digest())
    folder = cache_dir if cache_dir is not None else default_cache_dir(environ)
    cached = folder / f"lfv_kernels-{digest.hexdigest()[:16]}.so"
    if not cached.is_file():
        _build(compiler, source_path, cached)
    if dest is None:
        return cached
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    dest.chmod(0o755)
    return dest


def _build(compiler: str, source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the kernel cache folder {target.parent}: {exc}"
        raise BuildError(msg) from exc
    # Build under a unique name and rename: concurrent test runs never see a half-written .so.
    handle, scratch = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=target.parent)
    os.close(handle)
    partial = Path(scratch)
    # -I: an edited copy of kernels.c elsewhere still finds tvm_abi.h.
    command = [
        compiler,
        *CFLAGS,
        f"-I{KERNELS_SOURCE.parent}",
        "-o",
        str(partial),
        str(source),
        *LIBS,
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
        )
        if completed.returncode != 0:
            msg = (
                f"{compiler} failed to compile {source} (exit {completed.returncode}):\n"
                f"{completed.stderr.strip()}"
            )
            raise BuildError(msg)
        partial.chmod(0o755)
        partial.replace(target)
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"could not run {' '.join(command)}: {exc}"
        raise BuildError(msg) from exc
    finally:
        partial.unlink(missing_ok=True)
