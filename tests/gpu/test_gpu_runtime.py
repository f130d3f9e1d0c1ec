"""GPU packages from our builder on a real GPU, through a CUDA build of libdlr.so.

Every kernel against the float64 reference; the demo network's GPU package against its CPU
twin (the committed demo package on the CPU runtime) on the demo set: outputs within 1e-4,
identical verdicts; the PTX-only build (the driver compiles it at load); the device choice
and its refusals on a machine that has a GPU.
"""

from __future__ import annotations

import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.errors import DeviceError, InferenceError
from lfv_edge.inspection.pipeline import Inspector, RawFrame
from lfv_edge.model.package import read_model_package
from lfv_edge.model.runner import DlrRunner
from lfv_edge.modelbuild import reference
from lfv_edge.modelbuild.graph import Network
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package, write_dlr_model
from tests.conftest import PackageFactory
from tests.gpu.conftest import demo_set
from tests.modelbuild.harness import max_abs_diff
from tests.modelbuild.test_ops import MAIN, OPS, TINY

OP_TOLERANCE = 1e-5  # as the CPU kernels against the reference (tests/modelbuild/test_ops.py)
TWIN_TOLERANCE = 1e-4  # GPU package against its CPU twin, whole networks


def _load_gpu(folder: Path, library: Path, network: Network) -> DlrRunner:
    return DlrRunner.load(folder, library=library, input_shape=network.input_shape, device="gpu")


def _every_op(shape: tuple[int, ...]) -> tuple[Network, list[str]]:
    """One network with every op of test_ops.py applied to the input, each its own output."""
    net = Network("every_op")
    x = net.input(shape)
    names = sorted(OPS)
    outputs = [
        OPS[name](net, x, np.random.default_rng(zlib.crc32(name.encode()))) for name in names
    ]
    net.set_outputs(*outputs)
    return net, names


@pytest.mark.parametrize("shape", [MAIN, TINY], ids=["65x91", "5x7"])
def test_every_kernel_matches_the_reference_on_the_gpu(
    gpu_libdlr: Path, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    # given: every op in one network (one nvcc run per shape)
    network, names = _every_op(shape)
    folder = write_dlr_model(tmp_path / "ops", network, meta_device="gpu", target="cuda")
    data = np.random.default_rng(42).normal(size=shape).astype(np.float32)
    # when
    outputs = _load_gpu(folder, gpu_libdlr, network).run(data)
    # then
    expected = reference.forward(network, data)
    diffs = {
        name: max_abs_diff([got], [want])
        for name, got, want in zip(names, outputs, expected, strict=True)
    }
    failures = {name: f"{d:.3g}" for name, d in diffs.items() if not d <= OP_TOLERANCE}
    assert not failures, f"max abs diff above {OP_TOLERANCE} at {shape}: {failures}"


def test_demo_network_on_the_gpu_equals_its_cpu_twin(demo_packages: tuple[Path, Path]) -> None:
    # given
    cpu = Inspector.load(read_model_package(demo_packages[0]), device="cpu")
    gpu = Inspector.load(read_model_package(demo_packages[1]), device="gpu")
    worst, verdicts, masks = 0.0, [], []
    for rgb in demo_set():
        source = RawFrame(rgb, "rgb")
        # when
        prepared = cpu.prepare(source)
        cpu_out, _ = cpu.infer(prepared)
        gpu_out, _ = gpu.infer(gpu.prepare(source))
        # then
        worst = max(worst, max_abs_diff(gpu_out, [o.astype(np.float64) for o in cpu_out]))
        a = cpu.finish(prepared, cpu_out, 0.0).verdict
        b = gpu.finish(prepared, gpu_out, 0.0).verdict
        verdicts.append((a.is_anomalous, b.is_anomalous))
        if a.mask is not None and b.mask is not None:
            masks.append(float(np.mean(a.mask == b.mask)))
    assert worst <= TWIN_TOLERANCE, f"GPU vs CPU outputs differ by {worst:.3g}"
    assert all(x == y for x, y in verdicts), f"verdicts differ: {verdicts}"
    assert len({x for x, _ in verdicts}) == 2, "the set holds normal and anomalous verdicts"
    assert min(masks) > 0.999, f"argmax masks agree: {min(masks):.5f}"


def test_auto_chooses_the_gpu_and_says_why(demo_packages: tuple[Path, Path]) -> None:
    inspector = Inspector.load(read_model_package(demo_packages[1]), device="auto")
    assert inspector.device.device == "gpu"
    assert "NVIDIA GPU and a CUDA build of libdlr.so" in inspector.device.reason


def test_ptx_only_build_runs_through_the_drivers_compiler(
    gpu_libdlr: Path, tmp_path: Path, make_package: PackageFactory
) -> None:
    # given: no machine code at all, only Turing-level PTX the driver compiles at load
    spec = PackageSpec(image_width=80, image_height=64, segmentation_head=True)
    gpu_spec = PackageSpec(
        image_width=80, image_height=64, segmentation_head=True, target="cuda",
        meta_device="gpu", cuda_targets=("compute_75",),
    )  # fmt: skip
    folder = build_lfv_package(tmp_path / "ptx", gpu_spec, libdlr=gpu_libdlr)
    data = np.random.default_rng(5).normal(size=(1, 3, 64, 80)).astype(np.float32)
    # when
    gpu_out = Inspector.load(read_model_package(folder), device="gpu").runner.run(data)
    cpu_out = Inspector.load(read_model_package(make_package(spec)), device="cpu").runner.run(data)
    # then
    assert max_abs_diff(gpu_out, [o.astype(np.float64) for o in cpu_out]) <= TWIN_TOLERANCE


def test_two_gpu_models_in_one_process_both_stay_right(
    gpu_libdlr: Path, tmp_path: Path, make_package: PackageFactory
) -> None:
    # given: two GPU packages (two kernel libraries, one CUDA context) loaded side by side
    specs = [
        PackageSpec(image_width=64, image_height=64),
        PackageSpec(image_width=96, image_height=72, network="reference"),
    ]
    runners = []
    for n, spec in enumerate(specs):
        gpu_spec = replace(spec, target="cuda", meta_device="gpu")
        gpu = build_lfv_package(tmp_path / f"g{n}", gpu_spec, libdlr=gpu_libdlr)
        runners.append(
            (
                Inspector.load(read_model_package(gpu), device="gpu").runner,
                Inspector.load(read_model_package(make_package(spec)), device="cpu").runner,
                spec.input_shape,
            )
        )
    rng = np.random.default_rng(9)
    # when: interleaved runs
    for _ in range(3):
        for gpu_runner, cpu_runner, shape in runners:
            data = rng.normal(size=shape).astype(np.float32)
            # then
            diff = max_abs_diff(
                gpu_runner.run(data), [o.astype(np.float64) for o in cpu_runner.run(data)]
            )
            assert diff <= TWIN_TOLERANCE


def test_gpu_package_without_its_meta_is_still_run_on_the_gpu(
    demo_packages: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = shutil.copytree(demo_packages[1], tmp_path / "no-meta")
    (folder / "mochi" / "compiled.meta").unlink()
    inspector = Inspector.load(read_model_package(folder), device="auto")
    assert inspector.device.device == "gpu", "the CUDA device code marks it a GPU build"


def test_refusals_on_a_gpu_machine_name_the_reason(
    demo_packages: tuple[Path, Path], tmp_path: Path, cpu_libdlr: Path
) -> None:
    # a GPU package whose stage carries the CPU-only runtime
    folder = shutil.copytree(demo_packages[1], tmp_path / "cpu-lib")
    shutil.copyfile(cpu_libdlr, folder / "mochi" / "libdlr.so")
    with pytest.raises(DeviceError, match="CPU-only build"):
        Inspector.load(read_model_package(folder), device="auto")
    # the CPU package asked to run on the GPU
    with pytest.raises(DeviceError, match="compiled for 'cpu'"):
        Inspector.load(read_model_package(demo_packages[0]), device="gpu")
    # a GPU package asked to run on the CPU
    with pytest.raises(DeviceError, match="cannot run on the CPU"):
        Inspector.load(read_model_package(demo_packages[1]), device="cpu")
    # a GPU package whose runtime needs a CUDA library this machine lacks
    broken = shutil.copytree(demo_packages[1], tmp_path / "missing-cuda")
    library = broken / "mochi" / "libdlr.so"
    data = library.read_bytes()
    library.write_bytes(data.replace(b"libcudart.so.", b"libcudaxx.so."))
    with pytest.raises(DeviceError, match=r"not installed: libcudaxx\.so\."):
        Inspector.load(read_model_package(broken), device="gpu")


def test_a_kernel_shape_mismatch_is_a_clear_load_or_run_error(
    gpu_libdlr: Path, tmp_path: Path
) -> None:
    # given: a GPU library built for 64×64 put beside a 64×80 graph
    small = PackageSpec(image_width=64, image_height=64, target="cuda", meta_device="gpu")
    wide = PackageSpec(image_width=80, image_height=64, target="cuda", meta_device="gpu")
    a = build_lfv_package(tmp_path / "a", small, libdlr=gpu_libdlr)
    b = build_lfv_package(tmp_path / "b", wide, libdlr=gpu_libdlr)
    shutil.copyfile(a / "mochi" / "compiled.so", b / "mochi" / "compiled.so")
    inspector = Inspector.load(read_model_package(b), device="gpu")
    data = np.zeros((1, 3, 64, 80), np.float32)
    # then
    with pytest.raises(InferenceError, match="the kernel was compiled for"):
        inspector.runner.run(data)
