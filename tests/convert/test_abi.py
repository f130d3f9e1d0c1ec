"""Calling compiled kernels one by one: hook slots, the system-lib shim, errors, alignment."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.convert import ConvertError
from lfv_edge.convert.abi import KernelCallError, KernelLibrary, aligned_copy, aligned_empty
from lfv_edge.modelbuild import networks
from lfv_edge.modelbuild.reference import forward


def test_aligned_buffers_start_on_128_bytes() -> None:
    for shape in [(1,), (3, 5), (1, 3, 7, 11)]:
        array = aligned_empty(shape)
        assert array.ctypes.data % 128 == 0
        assert array.shape == shape
        assert array.flags.c_contiguous
    copy = aligned_copy(np.arange(10, dtype=np.float32))
    assert copy.ctypes.data % 128 == 0
    assert copy.tolist() == list(range(10))


@pytest.mark.parametrize("kind", ["hooks", "syslib"])
def test_workspace_and_parallel_launch_hooks_work(
    hook_libraries: dict[str, Path], kind: str
) -> None:
    # fused_nn_relu allocates a workspace, runs a parallel lambda, frees the workspace: the
    # three hooks are our callbacks (through the shim for the --system-lib build).
    library = KernelLibrary(hook_libraries[kind], system_lib=kind == "syslib")
    x = aligned_copy(np.linspace(-3, 3, 1000, dtype=np.float32).reshape(10, 100))
    y = aligned_empty((10, 100))
    library.call("fused_nn_relu", [x, y])
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_system_lib_kernels_register_through_the_shim(hook_libraries: dict[str, Path]) -> None:
    KernelLibrary(hook_libraries["syslib"], system_lib=True)
    # The shim is loaded RTLD_GLOBAL: its registry lookup is visible process-wide.
    lookup = ctypes.CDLL(None).lfv_shim_symbol
    lookup.restype = ctypes.c_void_p
    lookup.argtypes = [ctypes.c_char_p]
    assert lookup(b"fused_nn_relu") is not None
    assert lookup(b"no_such_kernel") is None


def test_a_kernel_error_carries_its_message(hook_libraries: dict[str, Path]) -> None:
    library = KernelLibrary(hook_libraries["hooks"])
    x, y = aligned_empty((4,)), aligned_empty((4,))
    with pytest.raises(KernelCallError, match="shape check failed"):
        library.call("fused_nn_relu_3", [x, y])


def test_an_external_call_is_refused_and_named(hook_libraries: dict[str, Path]) -> None:
    library = KernelLibrary(hook_libraries["hooks"])
    x, y = aligned_empty((4,)), aligned_empty((4,))
    with pytest.raises(KernelCallError, match=r"tvm\.contrib\.sort\.argsort"):
        library.call("fused_nn_relu_2", [x, y])
    assert library.hooks.external_calls == ["tvm.contrib.sort.argsort"]


def test_unknown_symbol_and_unaligned_buffers_are_refused(hook_libraries: dict[str, Path]) -> None:
    library = KernelLibrary(hook_libraries["hooks"])
    assert not library.has("fused_nothing")
    with pytest.raises(KernelCallError, match="does not export"):
        library.call("fused_nothing", [])
    raw = np.zeros(17, dtype=np.float32)[1:]  # 4 bytes past an allocation start
    if raw.ctypes.data % 64:
        with pytest.raises(ConvertError, match="aligned"):
            library.call("fused_nn_relu", [raw, aligned_empty((16,))])


def test_builder_kernels_called_directly_match_the_reference(kernels_so: Path) -> None:
    # The builder's kernels through our caller give what its float64 reference gives.
    net = networks.reference_classifier(20, 24)
    library = KernelLibrary(kernels_so)
    rng = np.random.default_rng(5)
    data = rng.standard_normal((1, 3, 20, 24)).astype(np.float32)
    values: dict[int, np.ndarray] = {net.input_tensor.index: aligned_copy(data)}
    for layer in net.layers:
        args = [values[t.index] for t in layer.inputs] + [aligned_copy(w) for _, w in layer.weights]
        out = aligned_empty(layer.output.shape)
        library.call(layer.func_name, [*args, out])
        values[layer.output.index] = out
    want = forward(net, data)[0]
    np.testing.assert_allclose(values[net.outputs[0].index], want, atol=1e-6)
