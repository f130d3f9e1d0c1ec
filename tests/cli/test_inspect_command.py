"""`lfv-edge inspect`: what a user needs to know about a package, as text and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lfv_edge", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_describes_classes_threshold_input_heads_runtime_and_files(
    make_package: PackageFactory,
) -> None:
    spec = PackageSpec(
        image_width=96,
        image_height=64,
        class_names=("normal", "anomaly"),
        class_normal_ids=(0,),
        threshold=0.4321,
        segmentation_head=True,
    )
    run = _inspect(str(make_package(spec, with_libdlr=False)), "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["Input"]["Shape"] == [1, 3, 64, 96], "NCHW input of a non-square model"
    assert info["Threshold"] == 0.4321, "the manifest threshold"
    assert [(c["Name"], c["Normal"]) for c in info["Classification"]["Classes"]] == [
        ("normal", True),
        ("anomaly", False),
    ], "class order and normal ids"
    assert [c["Name"] for c in info["Segmentation"]["Classes"]] == [
        "background",
        "scratch",
        "dent",
    ], "mask classes"
    assert info["Runtime"]["Origin"] == "cpu-runtime", (
        "no libdlr.so in the package: the CPU runtime"
    )
    assert info["Runtime"]["GpuLibraries"] == [], "a CPU-only runtime"
    assert info["Device"]["auto"] == {
        "possible": True,
        "device": "cpu",
        "reason": info["Device"]["auto"]["reason"],
    }, "auto → cpu"
    assert info["Device"]["gpu"]["possible"] is False, "no GPU here, and the reason says why"
    assert {f["Name"] for f in info["Files"]} >= {
        "mochi/compiled.so",
        "mochi/compiled.params",
        "mochi/compiled_model.json",
    }, "files listed"


def test_text_is_readable_and_the_default_is_the_demo_package() -> None:
    run = _inspect()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("Package     lfv_demo_greengrass_model_component"), lines[0]
    assert "Graph       single_stage_model_graph, stage mochi" in lines, run.stdout
    assert any(line.startswith("Mask        0=background, 1=scratch") for line in lines), run.stdout


def test_a_broken_package_exits_3_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(
        '{"model_graph": {"model_graph_type": "two_stage_model_graph", "stages": []}}'
    )
    run = _inspect(str(tmp_path))
    assert run.returncode == 3, run.stderr
    assert "'two_stage_model_graph'" in run.stderr, "names the unsupported type"
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
