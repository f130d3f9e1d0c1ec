"""The malformed-package matrix: every failure mode of dlr-runtime.md §7 gives a clear error.

Each case breaks a good builder-made package one way and runs `lfv-edge infer` on it in a
subprocess: the process must exit with a code in 1–125 (not killed by a signal), print the
expected reason on stderr, and never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.tvm_params import decode_params, encode_params
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb, write_image

Breaker = Callable[[Path], Path]  # takes a package copy, breaks it, returns what to pass to --model


def _stage(pkg: Path) -> Path:
    return pkg / "mochi"


def _rewrite_params(
    pkg: Path, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
) -> Path:
    path = _stage(pkg) / "compiled.params"
    arrays = {
        name: array.to_numpy().copy() for name, array in decode_params(path.read_bytes()).items()
    }
    path.write_bytes(encode_params(change(arrays)))
    return pkg


def _first_weight(arrays: dict[str, np.ndarray]) -> str:
    return sorted(arrays, key=lambda name: -arrays[name].size)[0]


def _graph(pkg: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((_stage(pkg) / "compiled_model.json").read_text())
    return loaded


def _write_graph(pkg: Path, graph: dict[str, object]) -> Path:
    (_stage(pkg) / "compiled_model.json").write_text(json.dumps(graph))
    return pkg


def _edit_graph(pkg: Path, edit: Callable[[dict[str, object]], object]) -> Path:
    graph = _graph(pkg)
    edit(graph)
    return _write_graph(pkg, graph)


def _first_op_attrs(graph: dict[str, object]) -> dict[str, object]:
    nodes = graph["nodes"]
    assert isinstance(nodes, list)
    attrs: dict[str, object] = next(n for n in nodes if n["op"] == "tvm_op")["attrs"]
    return attrs


def _data_not_first(graph: dict[str, object]) -> None:
    args = graph["arg_nodes"]
    assert isinstance(args, list)
    graph["arg_nodes"] = [*args[1:], args[0]]


def _patch_machine(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[18:20] = (0xB7).to_bytes(2, "little")  # e_machine = aarch64
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _manifest(pkg: Path, edit: Callable[[dict[str, object]], object]) -> Path:
    path = pkg / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return pkg


def _stage0(manifest: dict[str, object]) -> dict[str, object]:
    graph = manifest["model_graph"]
    assert isinstance(graph, dict)
    stage: dict[str, object] = graph["stages"][0]
    return stage


def _move(pkg: Path, name: str) -> Path:
    target = pkg.parent / name
    pkg.rename(target)
    return target


def _do(action: Callable[[Path], object]) -> Breaker:
    def breaker(pkg: Path) -> Path:
        action(pkg)
        return pkg

    return breaker


def _move_kernel_into_subfolder(stage: Path) -> None:
    (stage / "lib").mkdir()
    (stage / "compiled.so").rename(stage / "lib" / "compiled.so")


def _zip_slip(pkg: Path) -> Path:
    archive = pkg.parent / "slip.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("manifest.json", (pkg / "manifest.json").read_text())
        out.writestr("../../outside.txt", "owned")
    return archive


@dataclass(frozen=True)
class Case:
    name: str
    breaker: Breaker
    expected: str
    args: tuple[str, ...] = ()


CASES = [
    Case(
        "params missing",
        _do(lambda p: (_stage(p) / "compiled.params").unlink()),
        "no *.params file",
    ),
    Case(
        "params empty",
        _do(lambda p: (_stage(p) / "compiled.params").write_bytes(b"")),
        "the file is empty",
    ),
    Case(
        "params truncated",
        _do(lambda p: _truncate(_stage(p) / "compiled.params", 200)),
        "truncated at byte",
    ),
    Case(
        "params random bytes",
        _do(lambda p: (_stage(p) / "compiled.params").write_bytes(os.urandom(512))),
        "not a TVM parameter file",
    ),
    Case(
        "weight wrong element count",
        lambda p: _rewrite_params(
            p, lambda a: {**a, (k := _first_weight(a)): np.zeros(a[k].size + 3, np.float32)}
        ),
        "in compiled.params but",
    ),
    Case(
        "weight stored float64",
        lambda p: _rewrite_params(
            p, lambda a: {**a, (k := _first_weight(a)): a[k].astype(np.float64)}
        ),
        "is float64",
    ),
    Case(
        "weight missing",
        lambda p: _rewrite_params(
            p, lambda a: {k: v for k, v in a.items() if k != _first_weight(a)}
        ),
        "missing weight",
    ),
    Case(
        "weight same size wrong shape",
        lambda p: _rewrite_params(p, lambda a: {**a, (k := _first_weight(a)): a[k].reshape(-1)}),
        "in compiled.params but",
    ),
    Case(
        "kernel so random bytes",
        _do(lambda p: (_stage(p) / "compiled.so").write_bytes(os.urandom(300))),
        "not an ELF shared object",
    ),
    Case(
        "kernel so empty",
        _do(lambda p: (_stage(p) / "compiled.so").write_bytes(b"")),
        "not an ELF shared object",
    ),
    Case(
        "kernel so truncated to 4 KiB",
        _do(lambda p: _truncate(_stage(p) / "compiled.so", 4096)),
        "truncated or corrupt",
    ),
    Case(
        "kernel so for aarch64",
        _do(lambda p: _patch_machine(_stage(p) / "compiled.so")),
        "built for aarch64",
    ),
    Case(
        "libdlr truncated to 3000 B",
        _do(lambda p: _truncate(_stage(p) / "libdlr.so", 3000)),
        "truncated or corrupt",
    ),
    Case(
        "libdlr random bytes",
        _do(lambda p: (_stage(p) / "libdlr.so").write_bytes(os.urandom(4096))),
        "not an ELF shared object",
    ),
    Case(
        "libdlr for aarch64",
        _do(lambda p: _patch_machine(_stage(p) / "libdlr.so")),
        "built for aarch64",
    ),
    Case(
        "no kernel so", _do(lambda p: (_stage(p) / "compiled.so").unlink()), "no kernel *.so file"
    ),
    Case(
        "no graph json",
        _do(lambda p: (_stage(p) / "compiled_model.json").unlink()),
        "no graph *.json file",
    ),
    Case(
        "kernel so in a sub-folder",
        _do(lambda p: _move_kernel_into_subfolder(_stage(p))),
        "sub-folders are not seen",
    ),
    Case(
        "two kernel so",
        _do(lambda p: shutil.copy(_stage(p) / "compiled.so", _stage(p) / "other.so")),
        "exactly one kernel *.so",
    ),
    Case(
        "two graph json",
        _do(lambda p: shutil.copy(_stage(p) / "compiled_model.json", _stage(p) / "copy.json")),
        "exactly one graph *.json",
    ),
    Case(
        "extra version.json",
        _do(lambda p: (_stage(p) / "version.json").write_text("{}")),
        "exactly one graph *.json",
    ),
    Case(
        "AppleDouble file",
        _do(lambda p: (_stage(p) / "._compiled.so").write_bytes(b"\0\5\26\7")),
        "exactly one kernel *.so",
    ),
    Case("two meta", _do(lambda p: (_stage(p) / "x.meta").write_text("{}")), "at most one *.meta"),
    Case(
        "tensorrt model",
        _do(lambda p: (_stage(p) / "model.tensorrt").write_bytes(b"x")),
        "TensorRT",
    ),
    Case(
        "graph names a missing kernel",
        lambda p: _edit_graph(p, lambda g: _first_op_attrs(g).update(func_name="lfv_missing_v2")),
        "does not export: lfv_missing_v2",
    ),
    Case(
        "broken graph json",
        _do(lambda p: (_stage(p) / "compiled_model.json").write_text('{"nodes": [')),
        "not valid JSON",
    ),
    Case(
        "tvm_op attr is a number",
        lambda p: _edit_graph(p, lambda g: _first_op_attrs(g).update(num_outputs=1)),
        "must be a JSON string",
    ),
    Case(
        "data input not first",
        lambda p: _edit_graph(p, _data_not_first),
        "must be the first argument node",
    ),
    Case("colon in the path", lambda p: _move(p, "pkg:v1"), "contains ':'"),
    Case("non-ASCII path", lambda p: _move(p, "pkg-défaut"), "non-ASCII"),
    Case(
        "meta says gpu",
        _do(
            lambda p: (_stage(p) / "compiled.meta").write_text(
                '{"Requirements": {"TargetDeviceType": "gpu"}}'
            )
        ),
        "compiled for the GPU",
    ),
    Case(
        "gpu requested on a cpu package",
        _do(lambda p: None),
        "GPU inference is not possible",
        ("--device", "gpu"),
    ),
    Case("manifest missing", _do(lambda p: (p / "manifest.json").unlink()), "no manifest.json"),
    Case("manifest broken", _do(lambda p: (p / "manifest.json").write_text("{")), "not valid JSON"),
    Case(
        "unsupported stage type",
        lambda p: _manifest(p, lambda m: _stage0(m).update(type="mooncake")),
        "'mooncake'",
    ),
    Case(
        "manifest size disagrees with the model",
        lambda p: _manifest(
            p, lambda m: (_stage0(m).update(image_width=80), _stage0(m).pop("input_shape"))
        ),
        "the model's input is",
    ),
    Case("zip slip", _zip_slip, "escapes the package folder"),
    Case(
        "not a package at all", lambda p: p / "manifest.json", "not a zip file or a package folder"
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_broken_package_fails_cleanly(
    make_package: PackageFactory, tmp_path: Path, case: Case
) -> None:
    # given a good package, broken one way
    good = make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp_path / "pkg")
    model = case.breaker(good)
    image = write_image(tmp_path / "part.png", solid_rgb(80, 80, (200, 30, 30)))
    # when
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(model), *case.args, str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # then
    assert 1 <= run.returncode <= 125, (
        f"{case.name}: exit code {run.returncode} (negative = killed by a signal)\n{run.stderr}"
    )
    assert case.expected in run.stderr, f"{case.name}: expected {case.expected!r} in:\n{run.stderr}"
    assert "Traceback" not in run.stderr, f"{case.name}: no traceback:\n{run.stderr}"
    assert run.stdout == "", f"{case.name}: nothing on stdout when the package cannot load"
    assert len(run.stderr.strip().splitlines()) == 1, f"{case.name}: one paragraph:\n{run.stderr}"
    assert not (tmp_path.parent / "outside.txt").exists(), "nothing was written outside"


def test_an_extra_weight_only_warns_and_runs(make_package: PackageFactory, tmp_path: Path) -> None:
    # DLR only warns about an unused weight; so do we (dlr-runtime.md §7 "not caught").
    pkg = _rewrite_params(
        make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp_path / "pkg"),
        lambda a: {**a, "not_in_graph": np.zeros(3, np.float32)},
    )
    image = write_image(tmp_path / "part.png", solid_rgb(80, 80, (200, 30, 30)))
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(pkg), str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "not_in_graph" in run.stderr, "the unused weight is named in a warning"
    assert json.loads(run.stdout)["DetectAnomalyResult"]["IsAnomalous"] is True, (
        "and the model runs"
    )
