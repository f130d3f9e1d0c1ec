"""Fixtures for the model builder tests: kernels compiled once per run, the real libdlr.so.

A missing CPU runtime is a failure, never a skip: run `scripts/setup`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lfv_edge.model.cpu_runtime import require_cpu_runtime
from lfv_edge.model.runner import configure_threads
from lfv_edge.modelbuild.compile import compile_kernels
from tests.modelbuild.harness import DlrHarness


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kernels.c compiled once per test run, into a private cache (no ~/.cache writes)."""
    return compile_kernels(cache_dir=tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture(scope="session")
def libdlr() -> Path:
    """The fetched real libdlr.so 1.6.0; TVM threads configured before the first inference."""
    # Without TVM_BIND_THREADS=0 the first parallel launch pins the pytest thread to one core.
    configure_threads(None)
    return require_cpu_runtime().library


@pytest.fixture
def dlr(kernels: Path, libdlr: Path, tmp_path: Path) -> DlrHarness:
    """Write-and-run helper for one test."""
    return DlrHarness(kernels, libdlr, tmp_path)
