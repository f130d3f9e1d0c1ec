"""Choosing the inference device: `auto`, `cpu` or `gpu`, decided before DLR ever loads.

A GPU run needs all four of: an NVIDIA GPU on this machine, a `libdlr.so` built with CUDA
(the PyPI 1.6.0 library is CPU-only), a model compiled for the GPU (`.meta` may say `cpu`), and
every CUDA/TensorRT library that `libdlr.so` links against. When one is missing, DLR either
dies inside `dlopen` with "No such file or directory" or fails with an empty error, so we
check each one and say which it is. `auto` picks the GPU only when all four hold.

Pure: reads files and `/proc`, runs `ldconfig -p` once (linker.py); no dlr, no cv2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lfv_edge.errors import DeviceError
from lfv_edge.model.cpu_runtime import CPU_ONLY_LIBDLR_SHA256
from lfv_edge.model.elf import SharedObject
from lfv_edge.model.linker import LibrarySearch

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


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """The device to run on and why."""

    device: Device
    reason: str


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the device decision needs to know about this machine (injectable for tests)."""

    gpu_present: bool
    libraries: LibrarySearch  # how the dynamic linker finds libraries here

    @classmethod
    def probe(cls, environ: Mapping[str, str] = os.environ) -> HostFacts:
        """Read the facts from this machine."""
        return cls(
            gpu_present=any(Path(p).exists() for p in GPU_DEVICE_FILES),
            libraries=LibrarySearch.of_this_machine(environ),
        )


def gpu_libraries(library: SharedObject) -> list[str]:
    """The CUDA/TensorRT libraries a `libdlr.so` links against (empty for a CPU build)."""
    return [name for name in library.needed if name.startswith(GPU_LIBRARY_PREFIXES)]


def missing_libraries(library: SharedObject, facts: HostFacts) -> list[str]:
    """Libraries `library` needs, directly or not, that the dynamic linker would not find."""
    return facts.libraries.link(library).missing_names


def choose_device(
    requested: DeviceRequest,
    *,
    library: SharedObject,
    library_sha256: str,
    meta_device: str | None,
    facts: HostFacts,
) -> DeviceChoice:
    """Decide cpu or gpu for a package; raise when the request cannot work.

    Args:
        requested: `auto`, `cpu` or `gpu`.
        library: the `libdlr.so` that will be loaded (package's own or the CPU runtime).
        library_sha256: its checksum (the PyPI 1.6.0 library is known to be CPU-only).
        meta_device: what the model is compiled for, if known: `gpu` when its kernel library
            carries CUDA/TensorRT modules, else `Requirements.TargetDeviceType` of its `.meta`
            (`FolderCheck.target_device`).
        facts: this machine's GPU and loader facts.

    Raises:
        DeviceError: says exactly which GPU condition fails, or that a GPU-compiled model
            cannot run on the CPU.
    """
    cuda_libs = gpu_libraries(library)
    missing = missing_libraries(library, facts)
    lib_name = str(library.path)
    problems: list[str] = []
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
    if meta_device == "gpu":
        msg = (
            "this model is compiled for the GPU (its .meta, or CUDA/TensorRT modules in its "
            "kernel library) and "
            "cannot run on the CPU"
        )
        if requested == "auto" and problems:
            msg += "; and GPU inference is not possible here: " + "; ".join(problems)
        raise DeviceError(msg)
    if missing:
        msg = f"{lib_name} cannot be loaded: it needs libraries that are not installed: {', '.join(missing)}"
        raise DeviceError(msg)
    if requested == "cpu":
        return DeviceChoice("cpu", "requested")
    return DeviceChoice("cpu", "auto: " + problems[0])
