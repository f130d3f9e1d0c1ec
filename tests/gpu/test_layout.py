"""GPU packages from our builder, read back on any machine with nvcc (no GPU needed).

A TVM CUDA build's layout (dlr-runtime.md §11): one exported host function per graph node,
the device code in `__tvm_dev_mblob` (one CUDA module whose function table names each node's
`<func_name>_kernel0` with its argument types and thread-axis tags), `.meta` saying gpu, and a
kernel library that links no CUDA library itself. The host functions are then driven through
ctypes with stand-ins for the runtime's hooks: the arguments they hand to `__TVMFuncCall` are
exactly what the runtime's CUDA module expects, and bad tensors get the kernel's own message.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.errors import DeviceError
from lfv_edge.model.device import HostFacts, choose_device
from lfv_edge.model.elf import read_shared_object, read_symbol_data
from lfv_edge.model.linker import LibrarySearch
from lfv_edge.model.package import read_model_package
from lfv_edge.model.tvm_blob import BLOB_SYMBOL, parse_module_blob
from lfv_edge.model.tvm_graph import parse_graph
from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.gpu import (
    DEFAULT_CUDA_TARGETS,
    KERNEL_SUFFIX,
    compile_gpu_kernels,
    gpu_func_names,
    plan_gpu,
)
from lfv_edge.modelbuild.graph import Network
from lfv_edge.modelbuild.networks import controllable_segmenter, reference_classifier
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package, network_for
from tests.conftest import PackageFactory

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tools" / "demo_model" / "export.py"
HOOKS = ("__tvm_module_ctx", "__TVMFuncCall", "__TVMBackendGetFuncFromEnv", "__TVMAPISetLastError")

SPECS = {
    "controllable-cls": PackageSpec(image_width=48, image_height=40),
    "controllable-seg": PackageSpec(
        image_width=64, image_height=48, segmentation_head=True, classification_head=True
    ),
    "reference": PackageSpec(image_width=96, image_height=80, network="reference"),
    "bench-seg": PackageSpec(
        image_width=64, image_height=64, network="bench", segmentation_head=True
    ),
}


@pytest.fixture(scope="module")
def gpu_packages(nvcc: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-packages")
    built = {}
    for name, spec in SPECS.items():
        gpu_spec = replace(spec, target="cuda", meta_device="gpu")
        built[name] = build_lfv_package(root / name, gpu_spec, libdlr=None)
    folder = root / "demo"
    completed = subprocess.run(
        [sys.executable, str(EXPORT), "--target", "cuda", "--out", str(root / "demo.zip"),
         "--folder", str(folder)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    built["demo"] = folder
    return built


@pytest.mark.parametrize("name", [*SPECS, "demo"])
def test_every_node_has_an_exported_host_function_and_its_kernel(
    gpu_packages: dict[str, Path], name: str
) -> None:
    # given
    stage = gpu_packages[name] / "mochi"
    graph = parse_graph((stage / "compiled_model.json").read_bytes())
    library = read_shared_object(stage / "compiled.so")
    data = read_symbol_data(stage / "compiled.so", BLOB_SYMBOL)
    # when
    assert data is not None, "a GPU build exports __tvm_dev_mblob"
    blob = parse_module_blob(data)
    # then
    nodes = [(node, node.func_name) for node in graph.nodes if node.func_name is not None]
    assert nodes, "the graph calls kernels"
    assert all(name.startswith("fused_") for _, name in nodes), "TVM-style node names"
    assert len({name for _, name in nodes}) == len(nodes), "one host function per node"
    assert graph.kernel_names() <= library.defined_symbols, "every host function is exported"
    assert set(HOOKS) <= library.defined_symbols, "the runtime's hooks are exported variables"
    assert library.needed == ("libc.so.6",), "the kernel library links no CUDA library itself"
    assert blob.kinds == ("cuda",)
    assert not blob.notes
    assert blob.import_tree == ((0, 1, 1), (1,)), "the host library imports the CUDA module"
    cuda = blob.modules[1]
    assert cuda.code_format == "fatbin"
    assert cuda.fatbin_targets == DEFAULT_CUDA_TARGETS, "sm_90 machine code and portable PTX"
    functions = {f.name: f for f in cuda.device_functions}
    assert set(functions) == {name + KERNEL_SUFFIX for _, name in nodes}
    for node, name in nodes:
        function = functions[name + KERNEL_SUFFIX]
        arity = len(node.inputs) + 1  # inputs and weights, then the output
        assert function.arg_types == ("handle",) * arity, name
        assert function.thread_axis_tags[0] == "blockIdx.x"
        assert function.thread_axis_tags[-1] == "threadIdx.x"
    meta = json.loads((stage / "compiled.meta").read_text())
    assert meta["Requirements"]["TargetDeviceType"] == "gpu"


@pytest.mark.parametrize("name", [*SPECS, "demo"])
def test_gpu_package_shares_graph_shapes_and_weights_with_its_cpu_twin(
    gpu_packages: dict[str, Path], make_package: PackageFactory, name: str
) -> None:
    # given: the same network written for the CPU
    stage = gpu_packages[name] / "mochi"
    gpu_graph = json.loads((stage / "compiled_model.json").read_text())
    if name == "demo":
        cpu_zip = (
            REPO / "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
        )
        cpu_stage = read_model_package(cpu_zip).stage_dir
    else:
        cpu_stage = make_package(SPECS[name]) / "mochi"
    cpu_graph = json.loads((cpu_stage / "compiled_model.json").read_text())
    # when
    strip = [{k: v for k, v in n.items() if k != "attrs"} for n in gpu_graph["nodes"]]
    cpu_strip = [{k: v for k, v in n.items() if k != "attrs"} for n in cpu_graph["nodes"]]
    # then
    assert strip == cpu_strip, "same nodes, inputs and order"
    assert gpu_graph["attrs"] == cpu_graph["attrs"], "same shapes, dtypes and storage plan"
    assert (stage / "compiled.params").read_bytes() == (cpu_stage / "compiled.params").read_bytes()


def test_gpu_package_passes_preflight_and_reports_its_cuda_module(
    gpu_packages: dict[str, Path],
) -> None:
    # when
    package = read_model_package(gpu_packages["controllable-seg"])
    # then
    assert package.stage.modules is not None
    assert package.stage.modules.kinds == ("cuda",)
    assert package.stage.meta_device == "gpu"
    assert package.stage.target_device == "gpu"


# --- the device decision on a machine without a GPU or a GPU runtime --------------------------


def _facts(gpu: bool) -> HostFacts:
    return HostFacts(gpu_present=gpu, libraries=LibrarySearch(env_dirs=(), cache={}))


def test_gpu_package_with_the_cpu_runtime_is_refused_on_every_device(
    gpu_packages: dict[str, Path],
) -> None:
    # given: no libdlr.so in the package, so the CPU runtime would load it
    package = read_model_package(gpu_packages["controllable-cls"])
    kwargs = {
        "library": package.library,
        "library_sha256": package.library_sha256,
        "meta_device": package.stage.target_device,
        "facts": _facts(gpu=True),
    }
    # then
    with pytest.raises(DeviceError, match="CPU-only build"):
        choose_device("gpu", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match=r"compiled for the GPU.*cannot run on the CPU"):
        choose_device("cpu", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match="CPU-only build"):
        choose_device("auto", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("meta", ["none", "cpu"])
def test_the_cuda_module_marks_a_gpu_build_whatever_the_meta_says(
    gpu_packages: dict[str, Path], tmp_path: Path, meta: str
) -> None:
    # given: a GPU package whose .meta was lost, or says cpu
    folder = shutil.copytree(gpu_packages["controllable-cls"], tmp_path / meta)
    meta_file = folder / "mochi" / "compiled.meta"
    if meta == "none":
        meta_file.unlink()
    else:
        meta_file.write_text(meta_file.read_text().replace('"gpu"', '"cpu"'))
    # when
    package = read_model_package(folder)
    # then
    assert package.stage.meta_device == (None if meta == "none" else "cpu")
    assert package.stage.target_device == "gpu", "only a GPU build of DLR can load the module"
    with pytest.raises(DeviceError, match=r"compiled for the GPU.*cannot run on the CPU"):
        choose_device(
            "cpu", library=package.library, library_sha256=package.library_sha256,
            meta_device=package.stage.target_device, facts=_facts(gpu=False),
        )  # fmt: skip


def test_infer_refuses_a_gpu_package_on_the_cpu_with_the_reason(
    gpu_packages: dict[str, Path], tmp_path: Path
) -> None:
    # given
    image = tmp_path / "x.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((40, 48, 3), np.uint8))
    # when
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "infer", "--model",
         str(gpu_packages["controllable-cls"]), "--device", "cpu", str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # then
    assert run.returncode == 3, run.stderr  # EXIT_PACKAGE: this package cannot be used here
    assert "compiled for the GPU" in run.stderr
    assert "cannot run on the CPU" in run.stderr
    assert "Traceback" not in run.stderr


# --- builder errors ------------------------------------------------------------------------------


def test_builder_without_nvcc_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"nvcc-not-here was not found on PATH.*nvcc"):
        compile_gpu_kernels(reference_classifier(8, 8), nvcc="nvcc-not-here", cache_dir=tmp_path)


def test_cuda_build_with_a_cpu_meta_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="must say 'gpu'"):
        build_lfv_package(tmp_path / "p", PackageSpec(target="cuda"), libdlr=None)


@pytest.mark.parametrize("target", ["sm90", "arch_90", "compute_9"])
def test_malformed_cuda_targets_are_refused(nvcc: None, tmp_path: Path, target: str) -> None:
    with pytest.raises(BuildError, match="must look like sm_90"):
        compile_gpu_kernels(reference_classifier(8, 8), targets=(target,), cache_dir=tmp_path)


def test_func_names_are_unique_c_identifiers() -> None:
    # given: layer names may hold dots, and two may sanitise to the same identifier
    net = Network("dots")
    x = net.input((1, 3, 8, 8))
    a = net.relu(x, name="a.b")
    b = net.relu(a, name="a_b")
    net.set_outputs(b)
    # when
    names = gpu_func_names(net)
    # then
    assert names == {"a.b": "fused_relu_a_b", "a_b": "fused_relu_a_b_1"}


# --- the host functions, driven through ctypes with stand-ins for the runtime's hooks -----------


class _Value(ctypes.Union):
    _fields_ = (("v_int64", ctypes.c_int64), ("v_handle", ctypes.c_void_p))


class _Tensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
        ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64),
    )  # fmt: skip


_SET_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_GET_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)
)
_CALL = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_Value), ctypes.POINTER(ctypes.c_int),
    ctypes.c_int, ctypes.POINTER(_Value), ctypes.POINTER(ctypes.c_int),
)  # fmt: skip


@dataclass
class _FakeRuntime:
    """Stands in for libdlr's TVM runtime: records what the host functions ask for."""

    library: ctypes.CDLL
    errors: list[str] = field(default_factory=list)
    lookups: list[tuple[int, str]] = field(default_factory=list)
    calls: list[tuple[int, list[int], list[int]]] = field(default_factory=list)
    callbacks: list[object] = field(default_factory=list)  # kept alive while installed

    def install(self, ctx: int) -> None:
        def set_error(message: bytes) -> None:
            self.errors.append(message.decode())

        def get_func(mod: int, name: bytes, out: ctypes._Pointer[ctypes.c_void_p]) -> int:
            self.lookups.append((mod, name.decode()))
            out[0] = 0x1000 + len(self.lookups)
            return 0

        def call(
            handle: int,
            values: ctypes._Pointer[_Value],
            codes: ctypes._Pointer[ctypes.c_int],
            n: int,
            *_: object,
        ) -> int:
            self.calls.append(
                (handle, [values[i].v_int64 for i in range(n)], [codes[i] for i in range(n)])
            )
            return 0

        hooks = {
            "__TVMAPISetLastError": _SET_ERROR(set_error),
            "__TVMBackendGetFuncFromEnv": _GET_FUNC(get_func),
            "__TVMFuncCall": _CALL(call),
        }
        self.callbacks = list(hooks.values())
        for name, callback in hooks.items():
            address = ctypes.cast(callback, ctypes.c_void_p).value
            ctypes.c_void_p.in_dll(self.library, name).value = address
        ctypes.c_void_p.in_dll(self.library, "__tvm_module_ctx").value = ctx


@pytest.fixture
def segmenter_library(nvcc: None, tmp_path: Path) -> tuple[Network, ctypes.CDLL]:
    network = controllable_segmenter(24, 40, classification_head=True)
    library = compile_gpu_kernels(network, tmp_path / "lib.so", cache_dir=tmp_path / "cache")
    return network, ctypes.CDLL(str(library))


def _tensors(
    shapes: list[tuple[int, ...]], device: int = 2
) -> tuple[list[_Tensor], list[ctypes.Array[ctypes.c_int64]], list[int]]:
    tensors: list[_Tensor] = []
    keep: list[ctypes.Array[ctypes.c_int64]] = []
    addresses: list[int] = []
    for i, shape in enumerate(shapes):
        dims = (ctypes.c_int64 * len(shape))(*shape)
        address = 0x7F0000000000 + (i << 24)
        tensor = _Tensor(address, device, 0, len(shape), 2, 32, 1, dims, None, 64 * i)
        tensors.append(tensor)
        keep.append(dims)
        addresses.append(address + 64 * i)
    return tensors, keep, addresses


def _call(
    library: ctypes.CDLL, name: str, tensors: list[_Tensor], codes: list[int] | None = None
) -> int:
    values = (_Value * len(tensors))()
    for i, tensor in enumerate(tensors):
        values[i].v_handle = ctypes.addressof(tensor)
    type_codes = (ctypes.c_int * len(tensors))(*(codes or [7] * len(tensors)))
    function = getattr(library, name)
    function.restype = ctypes.c_int
    return int(
        function(values, type_codes, len(tensors), None, None, None)  # ret, ret_tcode, resource
    )


def test_host_function_launches_its_kernel_with_device_pointers_and_launch_sizes(
    segmenter_library: tuple[Network, ctypes.CDLL],
) -> None:
    # given
    network, library = segmenter_library
    runtime = _FakeRuntime(library)
    runtime.install(ctx=0xC0FFEE)
    node = plan_gpu(network)[0]
    tensors, _keep, addresses = _tensors([shape for _, shape in node.args])
    # when
    first = _call(library, node.func_name, tensors)
    second = _call(library, node.func_name, tensors)
    # then
    assert (first, second) == (0, 0), runtime.errors
    assert runtime.lookups == [(0xC0FFEE, node.kernel)], "the kernel is fetched once, then cached"
    handle, values, codes = runtime.calls[0]
    arity = len(node.args)
    assert values[:arity] == addresses, "data + byte_offset of each tensor, in graph order"
    assert codes[:arity] == [3] * arity, "device pointers go as opaque handles"
    assert values[arity:] == list(node.launch)
    assert codes[arity:] == [0] * len(node.launch)
    assert runtime.calls[1][0] == handle


def test_host_function_fetches_again_after_another_model_loads_the_library(
    segmenter_library: tuple[Network, ctypes.CDLL],
) -> None:
    # given: the runtime rewrites __tvm_module_ctx when the same library is loaded again
    network, library = segmenter_library
    runtime = _FakeRuntime(library)
    node = plan_gpu(network)[1]
    tensors, _keep, _ = _tensors([shape for _, shape in node.args])
    runtime.install(ctx=0x1111)
    assert _call(library, node.func_name, tensors) == 0
    # when
    ctypes.c_void_p.in_dll(library, "__tvm_module_ctx").value = 0x2222
    assert _call(library, node.func_name, tensors) == 0
    # then
    assert [ctx for ctx, _ in runtime.lookups] == [0x1111, 0x2222]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("cpu", "on device type 1; this model is compiled for the GPU"),
        ("shape", "the kernel was compiled for"),
        ("dtype", "expected float32"),
        ("code", "type code 3, expected 7"),
        ("count", "expected 4 arguments"),
    ],
)
def test_bad_tensors_get_the_host_function_message_and_no_launch(
    segmenter_library: tuple[Network, ctypes.CDLL], damage: str, message: str
) -> None:
    # given
    network, library = segmenter_library
    runtime = _FakeRuntime(library)
    runtime.install(ctx=0x33)
    node = plan_gpu(network)[0]  # the 1×1 conv: data, weight, bias, output
    tensors, _keep, _ = _tensors([shape for _, shape in node.args])
    codes = None
    if damage == "cpu":
        tensors[0].device_type = 1
    elif damage == "shape":
        tensors[3].shape[3] += 1
    elif damage == "dtype":
        tensors[1].bits = 16
    elif damage == "code":
        codes = [7, 3, 7, 7]
    elif damage == "count":
        tensors = tensors[:3]
    # when
    result = _call(library, node.func_name, tensors, codes)
    # then
    assert result == -1
    assert runtime.calls == [], "nothing is launched"
    assert runtime.errors
    assert runtime.errors[-1].startswith(node.func_name + ": ")
    assert message in runtime.errors[-1], runtime.errors[-1]


def test_host_function_outside_a_runtime_fails_cleanly(
    segmenter_library: tuple[Network, ctypes.CDLL],
) -> None:
    # given: loaded by ctypes, so the runtime never filled the hooks
    network, library = segmenter_library
    node = plan_gpu(network)[0]
    tensors, _keep, _ = _tensors([shape for _, shape in node.args])
    # then
    assert _call(library, node.func_name, tensors) == -1, "no crash, an error return"


def test_conv_kernels_cover_every_output_channel() -> None:
    # given: output channels are split into blocks of up to 8 per thread
    for co in (1, 3, 5, 8, 13, 96):
        net = Network(f"co{co}")
        x = net.input((1, 3, 17, 23))
        net.set_outputs(net.conv2d(x, np.zeros((co, 3, 3, 3)), np.zeros(co)))
        # when
        (node,) = plan_gpu(net)
        cob = int(node.call.rsplit(",", 1)[1].strip(" >"))
        # then
        assert node.launch[1] * cob >= co, f"{co} channels, {node.launch[1]} blocks of {cob}"
        assert node.launch[0] * node.launch[2] >= 17 * 23, "every output pixel has a thread"


def test_network_for_spec_has_no_op_without_a_gpu_kernel() -> None:
    for spec in SPECS.values():
        assert plan_gpu(network_for(spec)), "every builder network maps to GPU kernels"
