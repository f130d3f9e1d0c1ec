"""The probe: a package that crashes DLR inside dlopen kills only a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.model.probe import probe_package
from lfv_edge.modelbuild import compile as kernel_compile
from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb, write_image

CRASH_ON_LOAD = (
    "#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGBUS); }\n"
)


@pytest.fixture(scope="module")
def crashing_package(
    make_package: PackageFactory, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A package that passes every pre-flight check, whose kernels kill the loader with SIGBUS."""
    tmp = tmp_path_factory.mktemp("crash")
    package = make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp / "pkg")
    source = Path(kernel_compile.__file__).with_name("kernels.c")
    crash = tmp / "crash.c"
    crash.write_text(CRASH_ON_LOAD)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-fvisibility=hidden", "-o", str(package / "mochi" / "compiled.so"), str(source), str(crash), "-lm"],
        check=True, capture_output=True,
    )  # fmt: skip
    return package


def test_the_probe_turns_a_crash_into_a_clear_error(crashing_package: Path) -> None:
    package = read_model_package(crashing_package)  # passes pre-flight: the .so is a valid ELF
    with pytest.raises(ModelPackageError, match="DLR crashed with SIGBUS"):
        probe_package(package.source, "cpu")
    with pytest.raises(ModelPackageError, match="SIGBUS"):
        Inspector.load(package, device="cpu", probe=True)


def test_without_the_probe_the_same_package_kills_the_process(
    crashing_package: Path, tmp_path: Path
) -> None:
    # the reason the probe exists: the in-process load dies by signal, uncatchably
    image = write_image(tmp_path / "a.png", solid_rgb(64, 64, (1, 2, 3)))
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(crashing_package), str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode < 0, f"killed by a signal without --probe (exit {run.returncode})"
    probed = subprocess.run(
        [
            sys.executable,
            "-m",
            "lfv_edge",
            "infer",
            "--probe",
            "--model",
            str(crashing_package),
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probed.returncode == 3, (
        f"with --probe: a clean package error (exit {probed.returncode}): {probed.stderr}"
    )
    assert "SIGBUS" in probed.stderr, "the signal is named"


def test_a_good_package_passes_the_probe(make_package: PackageFactory) -> None:
    package = read_model_package(make_package(PackageSpec(image_width=64, image_height=64)))
    probe_package(package.source, "cpu")  # no exception
    assert Inspector.load(package, device="cpu", probe=True).package is package, (
        "then loads in-process"
    )
