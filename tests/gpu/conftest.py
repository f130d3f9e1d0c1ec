"""Fixtures for the GPU tests.

Two kinds of test live here. Layout and host-ABI tests build GPU packages with nvcc and read
them back on any machine (skipped where nvcc is absent). Tests marked `gpu` run the packages
on an NVIDIA GPU through a CUDA build of libdlr.so named by `$LFV_EDGE_GPU_LIBDLR`; they are
skipped where either is missing. No GPU libdlr.so is on PyPI and none is committed: it is
built from DLR's public sources on the GPU machine (docs/gpu.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.demo.synthetic_line import DEFECTS, SURFACES, generate_sample
from lfv_edge.model.device import HostFacts, gpu_libraries
from lfv_edge.model.elf import read_shared_object
from lfv_edge.model.runner import configure_threads
from lfv_edge.modelbuild.gpu import nvcc_available

GPU_LIBDLR_ENV = "LFV_EDGE_GPU_LIBDLR"
REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tools" / "demo_model" / "export.py"
DEMO_CPU = REPO / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"


def demo_set(count: int = 24, size: int = 384, seed: int = 2026) -> list[np.ndarray]:
    """The images `lfv-edge demo` shows (its seeded plan: every surface, normal and each defect)."""
    kinds = (None, *DEFECTS)
    return [
        generate_sample(
            seed * 1000 + i, SURFACES[i % len(SURFACES)], kinds[i % len(kinds)], size=(size, size)
        ).image_rgb
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def nvcc() -> None:
    """Skip where GPU packages cannot be built (no nvcc on PATH)."""
    if not nvcc_available():
        pytest.skip("nvcc (CUDA's compiler) is not on PATH: GPU packages cannot be built here")


@pytest.fixture(scope="session")
def gpu_libdlr(nvcc: None) -> Path:
    """The CUDA build of libdlr.so to run GPU packages with; skips where there is no GPU."""
    configured = os.environ.get(GPU_LIBDLR_ENV)
    if not configured:
        pytest.skip(f"${GPU_LIBDLR_ENV} is not set: no CUDA build of libdlr.so to test with")
    library = Path(configured)
    if not library.is_file():
        pytest.skip(f"${GPU_LIBDLR_ENV} names {library}, which does not exist")
    if not HostFacts.probe().gpu_present:
        pytest.skip("no NVIDIA GPU on this machine")
    assert gpu_libraries(read_shared_object(library)), f"{library} is not a CUDA build"
    configure_threads(None)  # before the first inference: TVM_BIND_THREADS=0
    return library


@pytest.fixture(scope="session")
def demo_packages(gpu_libdlr: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the committed CPU demo package, its GPU twin with the GPU libdlr.so in its stage)."""
    out = tmp_path_factory.mktemp("demo-gpu")
    completed = subprocess.run(
        [sys.executable, str(EXPORT), "--target", "cuda", "--libdlr", str(gpu_libdlr),
         "--out", str(out / "gpu.zip"), "--folder", str(out / "gpu")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return DEMO_CPU, out / "gpu"
