"""The malformed-package matrix: every failure mode of docs/dlr-runtime.md §7 gives a clear error.

Each case breaks a good builder-made package one way and runs `lfv-edge infer` on it in a
subprocess: the process must exit with a code in 1–125 (not killed by a signal), print the
expected reason on stderr, and never a traceback.
"""

from __future__ import annotations

import base64
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

from lfv_edge.errors import InferenceError
from lfv_edge.inspection.imaging import encode_png
from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import DlrRunner
from lfv_edge.model.tvm_params import decode_params, encode_params
from lfv_edge.modelbuild import compile as kernel_compile
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.core import Service
from lfv_edge.transports.memory import MemoryTransport
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb, write_image
from tests.model.test_probe import CRASH_ON_LOAD

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


def _reshape_intermediate(graph: dict[str, object]) -> None:
    # The first kernel's output keeps its element count but changes shape: pre-flight checks
    # weights, not intermediate entries, and DLR only sizes buffers, so the kernel's own
    # argument check fails at run time (docs/dlr-runtime.md §7 "kernel returns -1 at run").
    nodes, rows, attrs = graph["nodes"], graph["node_row_ptr"], graph["attrs"]
    assert isinstance(nodes, list), "graph nodes"
    assert isinstance(rows, list), "graph node_row_ptr"
    assert isinstance(attrs, dict), "graph attrs"
    first_op = next(i for i, node in enumerate(nodes) if node["op"] == "tvm_op")
    shapes = attrs["shape"][1]
    n, c, h, w = shapes[rows[first_op]]
    shapes[rows[first_op]] = [n, c, h // 2, w * 2]


def _no_runtime_anywhere(pkg: Path) -> Path:
    (_stage(pkg) / "libdlr.so").unlink()
    (pkg.parent / "empty-runtime-dir").mkdir()
    return pkg


@dataclass(frozen=True)
class Case:
    name: str
    breaker: Breaker
    expected: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # "{tmp}" in a value is the test's tmp_path


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
    Case(
        "two params",
        _do(lambda p: shutil.copy(_stage(p) / "compiled.params", _stage(p) / "b.params")),
        "exactly one *.params",
    ),
    Case(
        "gpu requested, no meta",
        _do(lambda p: (_stage(p) / "compiled.meta").unlink()),
        "GPU inference is not possible",
        ("--device", "gpu"),
    ),
    Case(
        "kernel refuses at run",
        lambda p: _edit_graph(p, _reshape_intermediate),
        "inference failed: lfv_conv2d_k1_s1: Check failed: ret == 0",
    ),
    Case("folder does not exist", lambda p: p.parent / "no-such-package", "no such file or folder"),
    Case(
        "no libdlr anywhere",
        _no_runtime_anywhere,
        "no libdlr.so in the package and no CPU runtime",
        env=(("LFV_EDGE_RUNTIME_DIR", "{tmp}/empty-runtime-dir"),),
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
    env = {**os.environ, **{k: v.replace("{tmp}", str(tmp_path)) for k, v in case.env}}
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(model), *case.args, str(image)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
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
    # DLR only warns about an unused weight; so do we (docs/dlr-runtime.md §7 "not caught").
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


@pytest.mark.parametrize("ignored", ["model-shapes.json", "hyperparams.json"])
def test_the_json_files_dlr_ignores_do_not_count_as_a_second_graph(
    make_package: PackageFactory, tmp_path: Path, ignored: str
) -> None:
    # docs/dlr-runtime.md §3/§7: these two names are not graphs for DLR, nor for pre-flight
    pkg = make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp_path / "pkg")
    (_stage(pkg) / ignored).write_text("{}")
    image = write_image(tmp_path / "part.png", solid_rgb(80, 80, (200, 30, 30)))
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model", str(pkg), str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"{ignored} is ignored: {run.stderr}"
    assert "DetectAnomalyResult" in json.loads(run.stdout), "and the model runs"


# --- run-time input checks (docs/dlr-runtime.md §7, last rows; §7 way 4) ---------------------------


@pytest.fixture(scope="module")
def dlr_runner(make_package: PackageFactory) -> DlrRunner:
    inspector = Inspector.load(
        read_model_package(make_package(PackageSpec(image_width=64, image_height=64))),
        device="cpu",
    )
    assert isinstance(inspector.runner, DlrRunner), "the real DLR runner"
    return inspector.runner


@pytest.mark.parametrize(
    "tensor",
    [
        np.zeros((1, 64, 64, 3), np.float32),  # NHWC: same element count, DLR runs it silently
        np.zeros((1, 3, 100, 100), np.float32),  # wrong size: DLR's "Mismatch found in input"
        np.zeros((2, 3, 64, 64), np.float32),  # batch 2
        np.zeros((1, 3, 64, 64), np.uint8),  # DLR would cast 0..255 to float32 unscaled
        np.zeros((1, 3, 64, 64), np.float64),  # DLR would cast silently
        np.zeros((3, 64, 64), np.float32),  # no batch axis
    ],
    ids=["nhwc", "wrong-size", "batch-2", "uint8", "float64", "no-batch-axis"],
)
def test_the_runner_refuses_any_tensor_but_the_exact_input_and_keeps_working(
    dlr_runner: DlrRunner, tensor: np.ndarray
) -> None:
    # when a tensor DLR would accept (or refuse only by element count) is run
    with pytest.raises(InferenceError, match=r"does not match the model's float32\[1, 3, 64, 64\]"):
        dlr_runner.run(tensor)
    # then the model still runs the right input, with the same result as before
    outputs = dlr_runner.run(np.full((1, 3, 64, 64), 0.5, np.float32))
    assert outputs[0].shape == (1, 2), "the handle is unharmed"
    assert abs(float(outputs[0].sum()) - 1.0) < 1e-5, "probabilities, as always"


class _RecordingModel:
    """Stands in for dlr.DLRModel at the runner's port: records what `run` is given."""

    def __init__(self) -> None:
        self.inputs: list[dict[str, np.ndarray]] = []

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.inputs.append(inputs)
        return [np.zeros((1, 2), np.float32)]


def test_the_runner_only_ever_sets_the_data_input_never_a_weight(dlr_runner: DlrRunner) -> None:
    # docs/dlr-runtime.md §7: a weight name as an input key overwrites that weight for every later
    # run. The runner names the data input only, the one DLR reported at load.
    model = _RecordingModel()
    runner = DlrRunner(model, dlr_runner.info)
    runner.run(np.zeros((1, 3, 64, 64), np.float32))
    assert [list(given) for given in model.inputs] == [[dlr_runner.info.input_name]], (
        "only the data input is set"
    )
    assert dlr_runner.info.input_name == "data", "and it is the data input, not a weight"


def test_a_kernel_failing_at_run_time_is_answered_per_request_and_the_service_keeps_serving(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    # given a service on a package whose first kernel refuses its arguments on every run
    pkg = _edit_graph(
        make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp_path / "pkg"),
        _reshape_intermediate,
    )
    transport = MemoryTransport()
    service = Service(
        Inspector.load(read_model_package(pkg), device="cpu"), [transport], stats_interval_s=0
    )
    service.start()
    try:
        # when three requests arrive
        image = base64.b64encode(_png_bytes())
        for i in range(3):
            transport.deliver(json.dumps({"RequestId": f"r{i}", "Body": image.decode()}).encode())
        replies = [json.loads(p.payload) for p in transport.wait_for(3, timeout_s=30)]
    finally:
        stopped = service.stop(30)
    # then each is answered with InferenceFailed and the kernel's reason, and nothing died
    assert [r["RequestId"] for r in replies] == ["r0", "r1", "r2"], "every request answered"
    assert {r["Error"]["Code"] for r in replies} == {"InferenceFailed"}, f"coded: {replies}"
    assert "lfv_conv2d_k1_s1" in replies[0]["Error"]["Message"], "the kernel says why"
    assert stopped, "the service drained and stopped normally"
    assert service.fatal_reason is None, "no fatal error"


def _png_bytes() -> bytes:
    return encode_png(solid_rgb(64, 64, (200, 30, 30)))


# --- the probe, from the long-running commands ------------------------------------------------


@pytest.fixture(scope="module")
def crashing_package(
    make_package: PackageFactory, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Passes every pre-flight check; its kernel library raises SIGBUS when DLR loads it."""
    tmp = tmp_path_factory.mktemp("crash")
    package = make_package.copy(PackageSpec(image_width=64, image_height=64), dest=tmp / "pkg")
    crash = tmp / "crash.c"
    crash.write_text(CRASH_ON_LOAD)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-fvisibility=hidden", "-o", str(_stage(package) / "compiled.so"),
         str(Path(kernel_compile.__file__).with_name("kernels.c")), str(crash), "-lm"],
        check=True, capture_output=True,
    )  # fmt: skip
    return package


def test_serve_with_model_probe_refuses_a_package_that_crashes_dlr(
    crashing_package: Path, tmp_path: Path
) -> None:
    # given a serve configuration that asks for the probe (model.probe)
    config = tmp_path / "serve.json"
    config.write_text(
        json.dumps(
            {
                "model": {"path": str(crashing_package), "probe": True},
                "mqtt": {
                    "broker": "mqtt://127.0.0.1:1",
                    "requestsTopic": "lfv/requests",
                    "resultsTopic": "lfv/results",
                },
            }
        )
    )
    # when serve starts on a package that kills DLR with SIGBUS while loading
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # then the probe child died, not serve: a package error (exit 3), one line, naming the signal
    assert run.returncode == 3, f"exit 3 (package refused), got {run.returncode}: {run.stderr}"
    assert "DLR crashed with SIGBUS" in run.stderr, f"the signal is named: {run.stderr}"
    assert "Traceback" not in run.stderr, f"no traceback: {run.stderr}"
