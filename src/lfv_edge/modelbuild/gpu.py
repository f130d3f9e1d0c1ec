"""GPU kernel libraries for our networks, laid out as TVM's CUDA builds are.

A TVM graph-executor model compiled for `cuda` (what Neo puts in LFV's GPU packages) is a
host `.so` with one exported packed-C function per graph node and the device code packed
into the exported `__tvm_dev_mblob` (dlr-runtime.md §11). This module writes the same for a
`Network`:

    node func_name   fused_<op>_<layer>        exported host function (gpu_host.c + generated C)
    device kernel    fused_<op>_<layer>_kernel0 in a fatbin: cubin per `sm_XY` target and PTX
                                               per `compute_XY` target (newer GPUs JIT the PTX)
    __tvm_dev_mblob  "_lib", "cuda" (format "fatbin", function table), "_import_tree" (blob.py)

Each host function checks its tensors (GPU, float32, exactly the shapes compiled in), fetches
its kernel once through `__TVMBackendGetFuncFromEnv(__tvm_module_ctx, …)` and calls it with
`__TVMFuncCall`: the data pointers, then one int64 per thread-axis tag (grid sizes, then the
block size). Shapes are compile-time constants of each kernel (gpu_kernels.cuh), as in TVM.

Needs nvcc (CUDA 11.x or newer; the default targets `sm_90` + `compute_75` need CUDA ≥ 11.8)
and gcc; the result links only libc. Built libraries are cached by content hash like the CPU
kernels (compile.py). Does not import dlr or cv2.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.blob import HANDLE, CudaFunction, CudaModule, encode_module_blob
from lfv_edge.modelbuild.compile import default_cache_dir, tool_version
from lfv_edge.modelbuild.graph import Layer, Network

HERE = Path(__file__).resolve().parent
DEVICE_HEADER = HERE / "gpu_kernels.cuh"
HOST_SOURCE = HERE / "gpu_host.c"
HOST_HEADER = HERE / "gpu_host.h"
ABI_HEADER = HERE / "tvm_abi.h"
# Hopper machine code for the GPUs we run on, plus Turing-level PTX (the oldest nvcc 13
# accepts) that the driver compiles for any newer GPU (Ampere, Ada, Orin, Blackwell).
DEFAULT_CUDA_TARGETS = ("sm_90", "compute_75")
NVCC_FLAGS = ("-O3", "-std=c++17", "--fatbin")
HOST_CFLAGS = (
    "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
    "-Wl,--no-undefined",
)  # fmt: skip
KERNEL_SUFFIX = "_kernel0"
BLOCK = 256
_TARGET = re.compile(r"(sm|compute)_(\d{2,3})[a-z]?\Z")
_COMPILE_TIMEOUT_S = 600
# conv2d: output channels per thread, largest first while the grid keeps this many blocks.
_CONV_MIN_BLOCKS = 256
_CONV_CHANNEL_BLOCKS = (8, 4, 2, 1)


@dataclass(frozen=True, slots=True)
class GpuNode:
    """One graph node's host function and device kernel."""

    func_name: str
    kernel: str  # the device entry point: func_name + "_kernel0"
    call: str  # the template call inside the kernel body
    args: tuple[tuple[str, tuple[int, ...]], ...]  # (role, exact shape), graph argument order
    tags: tuple[str, ...]  # thread-axis tags, launch order
    launch: tuple[int, ...]  # one size per tag

    @property
    def function(self) -> CudaFunction:
        """The function-table entry of this node's kernel."""
        return CudaFunction(self.kernel, (HANDLE,) * len(self.args), self.tags)


def _identifier(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def gpu_func_names(network: Network) -> dict[str, str]:
    """Layer name → the func_name of its graph node in a GPU build (unique C identifiers)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for layer in network.layers:
        base = f"fused_{layer.kind}_{_identifier(layer.name)}"
        name, n = base, 1
        while name in taken:
            name = f"{base}_{n}"
            n += 1
        taken.add(name)
        names[layer.name] = name
    return names


def _block(count: int) -> int:
    """Threads per block for `count` work items: a multiple of 32, at most BLOCK."""
    return min(BLOCK, max(32, 32 * math.ceil(count / 32)))


def _flat(count: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    block = _block(count)
    return ("blockIdx.x", "threadIdx.x"), (math.ceil(count / block), block)


def _per_block(blocks: int, items: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    return ("blockIdx.x", "threadIdx.x"), (blocks, _block(items))


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _lit(value: int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if abs(value) < 2**31 else f"{value}LL"


def _template(name: str, *params: int | bool) -> str:
    return f"lfv::{name}<{', '.join(_lit(p) for p in params)}>"


def _node(layer: Layer, func_name: str) -> GpuNode:
    kind = layer.kind
    inputs = [tensor.shape for tensor in layer.inputs]
    weights = [array.shape for _, array in layer.weights]
    out = layer.output.shape
    roles = {
        "conv2d": ("data", "weight", "bias"),
        "depthwise_conv2d": ("data", "weight", "bias"),
        "dense": ("data", "weight", "bias"),
        "add": ("lhs", "rhs"),
        "concat": ("lhs", "rhs"),
    }.get(kind, ("data",))
    shapes = [*inputs, *weights]
    if len(roles) != len(shapes):
        msg = f"{layer.name}: {kind} with {len(shapes)} arguments is not supported on the GPU"
        raise BuildError(msg)
    args = (*zip(roles, (tuple(s) for s in shapes), strict=True), ("output", tuple(out)))

    def node(call: str, tags: tuple[str, ...], launch: tuple[int, ...]) -> GpuNode:
        return GpuNode(func_name, func_name + KERNEL_SUFFIX, call, args, tags, launch)

    if kind == "conv2d":
        _, ci, h, w = inputs[0]
        _, co, ho, wo = out
        k = weights[0][2]
        pixels = ho * wo
        block = _block(pixels)
        grid_x = math.ceil(pixels / block)
        cob = next(
            (
                c
                for c in _CONV_CHANNEL_BLOCKS
                if c <= co and grid_x * math.ceil(co / c) >= _CONV_MIN_BLOCKS
            ),
            1,
        )
        call = _template("conv2d", ci, h, w, co, ho, wo, k, layer.stride, layer.relu, cob)
        return node(
            call, ("blockIdx.x", "blockIdx.y", "threadIdx.x"), (grid_x, math.ceil(co / cob), block)
        )
    if kind == "depthwise_conv2d":
        _, c, h, w = inputs[0]
        _, _, ho, wo = out
        call = _template("dwconv2d", c, h, w, ho, wo, layer.stride, layer.relu)
        return node(call, *_flat(_numel(out)))
    if kind == "relu":
        return node(_template("relu", _numel(out)), *_flat(_numel(out)))
    if kind == "add":
        return node(_template("add", _numel(out), layer.relu), *_flat(_numel(out)))
    if kind == "maxpool2":
        _, c, h, w = inputs[0]
        _, _, ho, wo = out
        return node(_template("maxpool2", c, h, w, ho, wo), *_flat(_numel(out)))
    if kind == "global_avg_pool":
        _, c, h, w = inputs[0]
        return node(_template("global_avg_pool", c, h * w), *_per_block(c, h * w))
    if kind == "dense":
        k, m = inputs[0][1], out[1]
        return node(_template("dense", k, m), *_per_block(m, k))
    if kind == "softmax":
        m = out[1]
        return node(_template("softmax", m), *_per_block(1, m))
    if kind == "softmax_channels":
        _, c, h, w = out
        return node(_template("softmax_channels", c, h * w), *_flat(h * w))
    if kind in ("upsample_nearest", "upsample_bilinear"):
        _, c, h, w = inputs[0]
        _, _, ho, wo = out
        return node(_template(kind, c, h, w, ho, wo), *_flat(_numel(out)))
    if kind == "concat":
        call = _template("concat", _numel(inputs[0]), _numel(inputs[1]))
        return node(call, *_flat(_numel(out)))
    msg = f"{layer.name}: op {kind!r} has no GPU kernel"
    raise BuildError(msg)


def plan_gpu(network: Network) -> list[GpuNode]:
    """The host function and kernel of every layer, in execution order."""
    names = gpu_func_names(network)
    return [_node(layer, names[layer.name]) for layer in network.layers]


def cuda_source(nodes: Sequence[GpuNode]) -> str:
    """The `.cu` file: one `extern "C"` kernel per node calling its template."""
    lines = [
        "// Generated by lfv_edge.modelbuild.gpu: one kernel per graph node.",
        '#include "gpu_kernels.cuh"',
        "",
    ]
    for node in nodes:
        params = [f"const float* __restrict__ a{i}" for i in range(len(node.args) - 1)]
        params.append("float* __restrict__ out")
        names = [f"a{i}" for i in range(len(node.args) - 1)] + ["out"]
        lines += [
            f'extern "C" __global__ void __launch_bounds__({BLOCK}) {node.kernel}({", ".join(params)}) {{',
            f"  {node.call}({', '.join(names)});",
            "}",
            "",
        ]
    return "\n".join(lines)


def host_source(nodes: Sequence[GpuNode]) -> str:
    """The generated host functions: one exported packed-C function per node."""
    lines = [
        "/* Generated by lfv_edge.modelbuild.gpu: one host function per graph node. */",
        '#include "gpu_host.h"',
        "",
    ]
    for n, node in enumerate(nodes):
        specs = []
        for i, (role, shape) in enumerate(node.args):
            lines.append(
                f"static const int64_t shape_{n}_{i}[] = {{{', '.join(str(d) for d in shape)}}};"
            )
            specs.append(f'{{"{role}", {len(shape)}, shape_{n}_{i}}}')
        launch = ", ".join(str(v) for v in node.launch)
        lines += [
            f"static lfv_kernel_cache cache_{n};",
            f"LFV_EXPORT int {node.func_name}(LFV_HOST_ARGS) {{",
            "  (void)ret;",
            "  (void)ret_tcode;",
            "  (void)resource_handle;",
            f"  static const lfv_tensor_spec specs[] = {{{', '.join(specs)}}};",
            f"  static const int64_t launch[] = {{{launch}}};  /* {', '.join(node.tags)} */",
            f'  return lfv_gpu_node("{node.func_name}", &cache_{n}, "{node.kernel}", args, '
            f"type_codes, num_args, specs, {len(node.args)}, launch, {len(node.launch)});",
            "}",
            "",
        ]
    return "\n".join(lines)


def _gencode(targets: Sequence[str]) -> list[str]:
    flags: list[str] = []
    if not targets:
        msg = "at least one CUDA target is needed (e.g. sm_90, compute_75)"
        raise BuildError(msg)
    for target in targets:
        match = _TARGET.match(target)
        if match is None:
            msg = f"CUDA target {target!r} must look like sm_90 (machine code) or compute_75 (PTX)"
            raise BuildError(msg)
        arch = "compute_" + target.split("_", 1)[1]
        flags += ["-gencode", f"arch={arch},code={target}"]
    return flags


def nvcc_available(nvcc: str = "nvcc") -> bool:
    """Whether GPU packages can be built here (nvcc on PATH)."""
    return shutil.which(nvcc) is not None


def _run(command: list[str], what: str, cwd: Path) -> None:
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_COMPILE_TIMEOUT_S,
            check=False,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"could not run {' '.join(command)}: {exc}"
        raise BuildError(msg) from exc
    if completed.returncode != 0:
        msg = f"{what} failed (exit {completed.returncode}):\n{completed.stderr.strip()}"
        raise BuildError(msg)


def compile_gpu_kernels(
    network: Network,
    dest: Path | None = None,
    *,
    targets: Sequence[str] = DEFAULT_CUDA_TARGETS,
    cache_dir: Path | None = None,
    nvcc: str = "nvcc",
    compiler: str = "gcc",
    environ: Mapping[str, str] = os.environ,
) -> Path:
    """Build the GPU kernel library of `network` (cached) and return its path.

    Args:
        network: the network whose graph the library serves (`gpu_func_names` names its nodes).
        dest: copy the library here and return it; None returns the cached file.
        targets: `sm_XY` (machine code) and `compute_XY` (PTX) entries of the fatbin.
        cache_dir: overrides compile.py's `default_cache_dir()`.
        nvcc, compiler: the CUDA and C compilers.
        environ: where the cache location is read.

    Raises:
        BuildError: nvcc or gcc missing or failing, an op without a GPU kernel, a bad target.
    """
    nodes = plan_gpu(network)
    device_code, host_code = cuda_source(nodes), host_source(nodes)
    gencode = _gencode(targets)
    versions = tool_version(
        nvcc,
        f"{nvcc} was not found on PATH: GPU packages need CUDA's compiler nvcc (CUDA 11.8 "
        "or newer) and gcc",
    ) + tool_version(compiler, f"the C compiler {compiler!r} was not found on PATH; install gcc")
    digest = hashlib.sha256()
    for part in (
        device_code.encode(), host_code.encode(), DEVICE_HEADER.read_bytes(),
        HOST_SOURCE.read_bytes(), HOST_HEADER.read_bytes(), ABI_HEADER.read_bytes(),
        "\0".join((*NVCC_FLAGS, *gencode, *HOST_CFLAGS)).encode(), versions.encode(),
    ):  # fmt: skip
        digest.update(hashlib.sha256(part).digest())
    folder = cache_dir if cache_dir is not None else default_cache_dir(environ)
    cached = folder / f"lfv_gpu_{network.name}-{digest.hexdigest()[:16]}.so"
    if not cached.is_file():
        _build(nodes, device_code, host_code, gencode, cached, nvcc=nvcc, compiler=compiler)
    if dest is None:
        return cached
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    dest.chmod(0o755)
    return dest


def _build(
    nodes: Sequence[GpuNode],
    device_code: str,
    host_code: str,
    gencode: Sequence[str],
    target: Path,
    *,
    nvcc: str,
    compiler: str,
) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the kernel cache folder {target.parent}: {exc}"
        raise BuildError(msg) from exc
    with tempfile.TemporaryDirectory(prefix="lfv-gpu-build-") as scratch:
        work = Path(scratch)
        (work / "kernels.cu").write_text(device_code)
        (work / "host.c").write_text(host_code)
        _run(
            [nvcc, *NVCC_FLAGS, *gencode, f"-I{HERE}", "-o", "kernels.fatbin", "kernels.cu"],
            "nvcc (GPU kernels)",
            work,
        )
        fatbin = (work / "kernels.fatbin").read_bytes()
        module = CudaModule("fatbin", tuple(node.function for node in nodes), fatbin)
        (work / "blob.bin").write_bytes(encode_module_blob(module))
        # The blob becomes the exported data symbol __tvm_dev_mblob, as TVM's export does.
        (work / "blob.S").write_text(
            '.section .rodata.tvm_dev_mblob,"a"\n'
            ".globl __tvm_dev_mblob\n.type __tvm_dev_mblob, @object\n.p2align 4\n"
            '__tvm_dev_mblob:\n.incbin "blob.bin"\n'
            ".size __tvm_dev_mblob, . - __tvm_dev_mblob\n"
            '.section .note.GNU-stack,"",@progbits\n'
        )
        partial = work / "library.so"
        _run(
            [compiler, *HOST_CFLAGS, f"-I{HERE}", "-o", str(partial), "host.c", str(HOST_SOURCE),
             "blob.S"],
            f"{compiler} (GPU host library)",
            work,
        )  # fmt: skip
        handle, scratch_target = tempfile.mkstemp(
            prefix=".building-", suffix=".so", dir=target.parent
        )
        os.close(handle)
        staged = Path(scratch_target)
        try:
            shutil.copyfile(partial, staged)
            staged.chmod(0o755)
            staged.replace(target)  # concurrent builds never see a half-written library
        finally:
            staged.unlink(missing_ok=True)
