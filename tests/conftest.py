"""Fixtures shared by the whole suite.

The real CPU `libdlr.so` must be installed (scripts/setup does it): a missing runtime is a
test failure, never a silent skip. Every test gets its own package cache folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lfv_edge import cpu_runtime
from lfv_edge.archive import CACHE_DIR_ENV


@pytest.fixture(scope="session")
def cpu_libdlr() -> Path:
    """The real libdlr.so from PyPI's dlr==1.6.0 wheel, fetched at set-up."""
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        pytest.fail(
            "the CPU DLR runtime is not installed: run scripts/setup (lfv-edge runtime install)"
        )
    assert runtime.sha256 == cpu_runtime.LIBDLR_SHA256, (
        "the installed libdlr.so is the verified one"
    )
    return runtime.library


@pytest.fixture(autouse=True)
def _private_package_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("cache")))
