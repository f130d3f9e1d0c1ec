"""Fixtures shared by the whole suite, and the tiers every test is sorted into.

Tiers (markers, applied here at collection, so no test file has to remember them):

* `broker`: starts a local mosquitto (the tests use the `broker`/`tls_broker` fixtures, or
  their folder runs serve against one: mqtt/, reliability/);
* `dlr`: needs the real CPU `libdlr.so` (tests that reach the `cpu_libdlr` fixture, e.g.
  through `make_package`, and the folders whose tests run models in child processes);
* `gpu`: needs an NVIDIA GPU and a CUDA build of libdlr.so (tests that reach the
  `gpu_libdlr` fixture of gpu/, which skips them elsewhere);
* `capture`: starts camera feeds (the `rtsp_feed`/`mjpeg_feed` fixtures of capture/);
* neither: the fast tier, `scripts/test --fast` (`-m "not dlr and not broker and not slow"`).

The real CPU `libdlr.so` must be installed (scripts/setup does it): a missing runtime is a
test failure, never a silent skip. Every test gets its own package cache folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lfv_edge.model import cpu_runtime
from lfv_edge.model.archive import CACHE_DIR_ENV
from lfv_edge.model.runner import configure_threads
from lfv_edge.modelbuild.compile import compile_kernels
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package

if TYPE_CHECKING:
    from tests.mqtt.conftest import Broker

# Folders whose every test needs a tier (their tests run `lfv-edge` or models in child
# processes, where no fixture shows it). Other tests get a tier from the fixtures they use.
FOLDER_TIERS: dict[str, tuple[str, ...]] = {
    "mqtt": ("broker", "dlr"),
    "reliability": ("broker", "dlr"),
    "agent": ("dlr",),
    "cli": ("dlr",),
    "modelbuild": ("dlr",),
    "capture": ("dlr",),  # the demo package runs in-process
}
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "broker": ("broker",),
    "tls_broker": ("broker",),
    "cpu_libdlr": ("dlr",),
    "gpu_libdlr": ("gpu", "dlr"),
    "browser": ("browser",),
    "rtsp_feed": ("capture",),
    "mjpeg_feed": ("capture",),
}
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort every test into its tiers (see the module docstring)."""
    for item in items:
        folder = Path(item.path).resolve().relative_to(_TESTS).parts[0]
        tiers = set(FOLDER_TIERS.get(folder, ()))
        for name in getattr(item, "fixturenames", ()):
            tiers.update(FIXTURE_TIERS.get(name, ()))
        for tier in sorted(tiers):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real mosquitto (with persistence) on 127.0.0.1, shared by one test module."""
    from tests.mqtt.conftest import Broker, free_port

    instance = Broker(tmp_path_factory.mktemp("mosquitto"), free_port())
    instance.start()
    yield instance
    instance.stop()


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


class PackageFactory:
    """Builds LFV-style packages with our model builder, once per distinct spec per test run."""

    def __init__(self, root: Path, kernels: Path, libdlr: Path) -> None:
        self._root = root
        self._kernels = kernels
        self._libdlr = libdlr
        self._built: dict[tuple[str, bool], Path] = {}

    def __call__(self, spec: PackageSpec | None = None, *, with_libdlr: bool = True) -> Path:
        spec = spec or PackageSpec()
        key = (repr(spec), with_libdlr)
        if key not in self._built:
            dest = self._root / f"pkg{len(self._built)}"
            build_lfv_package(
                dest, spec, libdlr=self._libdlr if with_libdlr else None, kernels=self._kernels
            )
            self._built[key] = dest
        return self._built[key]

    def copy(
        self, spec: PackageSpec | None = None, *, with_libdlr: bool = True, dest: Path
    ) -> Path:
        """A private, mutable copy of a built package (for breaking it)."""
        shutil.copytree(self(spec, with_libdlr=with_libdlr), dest)
        return dest


@pytest.fixture(scope="session")
def kernels_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our C kernels, compiled once per run into a private cache."""
    return compile_kernels(cache_dir=tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="session")
def make_package(
    tmp_path_factory: pytest.TempPathFactory, kernels_so: Path, cpu_libdlr: Path
) -> PackageFactory:
    """`make_package(PackageSpec(...))` → a package folder built by our builder (cached)."""
    configure_threads(None)  # before the first inference: TVM_BIND_THREADS=0
    return PackageFactory(tmp_path_factory.mktemp("packages"), kernels_so, cpu_libdlr)
