"""Choosing the inference device: `auto`, `cpu` or `gpu`, decided before DLR ever loads.

A GPU run needs all four of: an NVIDIA GPU on this machine, a `libdlr.so` built with CUDA
(the PyPI 1.6.0 library is CPU-only), a model compiled for the GPU (`.meta` says `gpu`, or
the kernel library carries CUDA device code), and every CUDA/TensorRT library that
`libdlr.so` links against. When one is missing, DLR either
dies inside `dlopen` with "No such file or directory" or fails with an empty error, so we
check each one and say which it is. `auto` picks the GPU only when all four hold.

Pure: reads files and `/proc`, runs `ldconfig -p` once; no dlr, no cv2.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lfv_edge.errors import DeviceError
from lfv_edge.model.cpu_runtime import CPU_ONLY_LIBDLR_SHA256
from lfv_edge.model.elf import SharedObject

logger = logging.getLogger(__name__)

Device = Literal["cpu", "gpu"]
DeviceRequest = Literal["auto", "cpu", "gpu"]
# Libraries whose presence in DT_NEEDED marks a CUDA build of libdlr.so.
GPU_LIBRARY_PREFIXES = (
    "libcudart",
    "libcuda.so",
    "libcublas",
    "libcudnn",
    "libnvinfer",
    "libnvrtc",
)
# Device nodes and proc files of the NVIDIA driver (desktop/server GPUs and Jetson).
GPU_DEVICE_FILES = (
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/proc/driver/nvidia/version",
    "/dev/nvhost-ctrl-gpu",
)
_DEFAULT_LIBRARY_DIRS = (
    "/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib",
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """The device to run on and why."""

    device: Device
    reason: str


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the device decision needs to know about this machine (injectable for tests)."""

    gpu_present: bool
    library_names: frozenset[str]  # sonames the dynamic loader can find (ldconfig -p)
    library_dirs: tuple[str, ...]  # LD_LIBRARY_PATH + default folders

    @classmethod
    def probe(cls, environ: Mapping[str, str] = os.environ) -> HostFacts:
        """Read the facts from this machine."""
        dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        dirs += list(_DEFAULT_LIBRARY_DIRS)
        return cls(
            gpu_present=any(Path(p).exists() for p in GPU_DEVICE_FILES),
            library_names=_ldconfig_names(),
            library_dirs=tuple(dirs),
        )


@functools.cache
def _ldconfig_names() -> frozenset[str]:
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            completed = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if completed.returncode == 0:
            names = {line.split()[0] for line in completed.stdout.splitlines()[1:] if line.strip()}
            return frozenset(names)
    return frozenset()


def gpu_libraries(library: SharedObject) -> list[str]:
    """The CUDA/TensorRT libraries a `libdlr.so` links against (empty for a CPU build)."""
    return [name for name in library.needed if name.startswith(GPU_LIBRARY_PREFIXES)]


def missing_libraries(library: SharedObject, facts: HostFacts) -> list[str]:
    """DT_NEEDED entries of `library` that the dynamic loader would not find."""
    search: Iterable[str] = (*library.search_paths, *facts.library_dirs)
    dirs = [Path(d) for d in search]
    missing = []
    for name in library.needed:
        if name in facts.library_names or any((d / name).exists() for d in dirs):
            continue
        missing.append(name)
    return missing


def choose_device(
    requested: DeviceRequest,
    *,
    library: SharedObject,
    library_sha256: str,
    meta_device: str | None,
    facts: HostFacts,
    device_code: Sequence[str] = (),
) -> DeviceChoice:
    """Decide cpu or gpu for a package; raise when the request cannot work.

    Args:
        requested: `auto`, `cpu` or `gpu`.
        library: the `libdlr.so` that will be loaded (package's own or the CPU runtime).
        library_sha256: its checksum (the PyPI 1.6.0 library is known to be CPU-only).
        meta_device: `Requirements.TargetDeviceType` from the stage's `.meta`, if any.
        facts: this machine's GPU and loader facts.
        device_code: module kinds packed into the kernel library (`("cuda",)` for a GPU
            build; preflight's `StageCheck.device_code`).

    Raises:
        DeviceError: says exactly which GPU condition fails, or that a GPU-compiled model
            cannot run on the CPU.
    """
    cuda_libs = gpu_libraries(library)
    missing = missing_libraries(library, facts)
    lib_name = str(library.path)
    problems: list[str] = []
    cuda_code = "cuda" in device_code
    if cuda_code and meta_device not in (None, "gpu"):
        msg = (
            f"the package contradicts itself: its kernel library carries CUDA device code but "
            f".meta TargetDeviceType says {meta_device!r}"
        )
        raise DeviceError(msg)
    if not facts.gpu_present:
        problems.append(
            "no NVIDIA GPU was found on this machine (no /dev/nvidia* or Jetson GPU node)"
        )
    if library_sha256 in CPU_ONLY_LIBDLR_SHA256 or not cuda_libs:
        problems.append(
            f"the runtime {lib_name} is a CPU-only build (it links no CUDA libraries); "
            "a GPU package brings its own GPU libdlr.so"
        )
    if meta_device is not None and meta_device != "gpu":
        problems.append(f"the model was compiled for {meta_device!r} (.meta TargetDeviceType)")
    if missing:
        problems.append(f"{lib_name} needs libraries that are not installed: {', '.join(missing)}")

    if requested == "gpu":
        if problems:
            msg = "GPU inference is not possible: " + "; ".join(problems)
            raise DeviceError(msg)
        return DeviceChoice("gpu", "requested, and GPU, CUDA runtime and libraries are present")
    if requested == "auto" and not problems:
        return DeviceChoice("gpu", "auto: NVIDIA GPU and a CUDA build of libdlr.so are present")
    if meta_device == "gpu" or cuda_code:
        why = (
            ".meta TargetDeviceType 'gpu'"
            if meta_device == "gpu"
            else "its kernel library carries CUDA device code"
        )
        msg = f"this package's model is compiled for the GPU ({why}) and cannot run on the CPU"
        if requested == "auto" and problems:
            msg += "; and GPU inference is not possible here: " + "; ".join(problems)
        raise DeviceError(msg)
    if missing:
        msg = f"{lib_name} cannot be loaded: it needs libraries that are not installed: {', '.join(missing)}"
        raise DeviceError(msg)
    if requested == "cpu":
        return DeviceChoice("cpu", "requested")
    return DeviceChoice("cpu", "auto: " + problems[0])
