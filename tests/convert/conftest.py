"""Fixtures for the converter tests.

* `hook_libraries`: tests/convert/hook_kernels.c compiled twice with gcc — as an ordinary
  kernel library (hook slots) and as a `--system-lib` one (undefined TVMBackend* functions,
  a registering constructor) — the shapes of real TVM output the real folders also have.
* `realmodels`: the real third-party folders beside the checkout (../shared/realmodels);
  tests that need one skip, saying so, when it is absent.
* `write_stage`: a DLR stage folder (graph JSON, .params, kernel library) from a
  `GraphBuilder`, for graphs that call the hook kernels.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lfv_edge.model.tvm_params import encode_params
from lfv_edge.modelbuild.graph import GraphBuilder

HOOK_SOURCE = Path(__file__).with_name("hook_kernels.c")
REALMODELS = Path(__file__).resolve().parents[3] / "shared" / "realmodels"


def realmodel(name: str) -> Path:
    """A real model folder, or skip the test saying it is absent."""
    folder = REALMODELS / name
    if not folder.is_dir():
        pytest.skip(f"real model folder {name} is not beside the checkout ({REALMODELS})")
    return folder


def _gcc(source: Path, target: Path, *flags: str) -> Path:
    command = [
        "gcc",
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Werror",
        *flags,
        "-o",
        str(target),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True)
    return target


@pytest.fixture(scope="session")
def hook_libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"hooks": ordinary library, "syslib": --system-lib style library}."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the test kernels (apt-get install gcc)")
    folder = tmp_path_factory.mktemp("hook-kernels")
    return {
        "hooks": _gcc(HOOK_SOURCE, folder / "hooks.so", "-Wl,--no-undefined"),
        "syslib": _gcc(HOOK_SOURCE, folder / "syslib.so", "-DSYSTEM_LIB"),
    }


StageWriter = Callable[[GraphBuilder, Path], Path]


@pytest.fixture
def write_stage(tmp_path: Path) -> StageWriter:
    """`write_stage(builder, kernel_library)` → a fresh stage folder."""
    count = 0

    def write(builder: GraphBuilder, library: Path) -> Path:
        nonlocal count
        count += 1
        folder = tmp_path / f"stage{count}"
        folder.mkdir()
        (folder / "model.json").write_text(builder.to_json())
        (folder / "model.params").write_bytes(encode_params(builder.params()))
        shutil.copyfile(library, folder / "kernels.so")
        return folder

    return write
