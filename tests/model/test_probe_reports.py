"""The probe child: a model run once on zeros, its outputs summarised, its death explained.

A child that dies inside DLR's load does so while libdlr's fd 2 is redirected into a capture
file; the probe still reports the last line written there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.probe import probe_package
from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.model.fabricate import kernel_folder
from tests.model.realmodels import capi_run

pytestmark = pytest.mark.dlr

EXIT_AT_LOAD = """
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void quit(void) {
    fprintf(stderr, "lfv test kernel: cannot start on this machine\\n");
    _exit(42);
}
"""
FAULT_AT_LOAD = """
#include <signal.h>
#include <stdio.h>
__attribute__((constructor)) static void fault(void) {
    fprintf(stderr, "lfv test kernel: about to fault\\n");
    raise(SIGSEGV);
}
"""


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lfv_edge", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_probe_summarises_every_output_like_a_plain_c_api_run(
    make_package: PackageFactory, cpu_libdlr: Path, tmp_path: Path
) -> None:
    package = make_package(PackageSpec(image_width=64, image_height=64, segmentation_head=True))
    summaries = probe_package(package, "cpu")
    plain = capi_run(
        cpu_libdlr, package / "mochi", {"data": np.zeros((1, 3, 64, 64), np.float32)}, tmp_path
    )
    assert isinstance(plain, list), plain
    assert [s.shape for s in summaries] == [o.shape for o in plain], "mask and score outputs"
    for summary, output in zip(summaries, plain, strict=True):
        assert summary.total == float(np.sum(output, dtype=np.float64))
        assert summary.l2 == float(np.sqrt(np.sum(np.square(output, dtype=np.float64))))


def test_a_child_that_exits_inside_the_load_is_reported_with_its_status_and_last_words(
    make_package: PackageFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = kernel_folder(make_package, tmp_path / "exits", EXIT_AT_LOAD)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the probe's work folder goes
    with pytest.raises(ModelPackageError) as caught:
        probe_package(folder, "cpu")
    text = str(caught.value)
    assert "exit status 42" in text, text
    assert "lfv test kernel: cannot start on this machine" in text, "written under the capture"
    assert list(temp.iterdir()) == [], "the work folder and the capture left behind are removed"
    run = _inspect(str(folder), "--probe")
    assert run.returncode == 3, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert "exit status 42" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_child_killed_by_a_signal_is_reported_with_the_signal_and_last_words(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    folder = kernel_folder(make_package, tmp_path / "faults", FAULT_AT_LOAD)
    with pytest.raises(ModelPackageError) as caught:
        probe_package(folder, "cpu")
    text = str(caught.value)
    assert "DLR crashed with SIGSEGV" in text, text
    assert "lfv test kernel: about to fault" in text
    run = _inspect(str(folder), "--json", "--probe")
    assert run.returncode == 3
    assert run.stdout == "", "no half-written JSON"
    assert "SIGSEGV" in run.stderr


def test_inspect_probe_on_a_package_adds_the_outputs_to_the_description(
    make_package: PackageFactory,
) -> None:
    package = make_package(PackageSpec(image_width=64, image_height=64))
    run = _inspect(str(package), "--json", "--probe")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    (probe,) = info["Probe"]
    assert set(probe) == {"Shape", "Sum", "L2"}
    assert probe["Shape"] == [1, 2]
    assert abs(probe["Sum"] - 1.0) < 1e-5
    without = json.loads(_inspect(str(package), "--json").stdout)
    assert "Probe" not in without, "only with --probe"
    text = _inspect(str(package), "--probe")
    assert text.stdout.splitlines()[-1].startswith("Probe 0     [1, 2] sum 1"), text.stdout
