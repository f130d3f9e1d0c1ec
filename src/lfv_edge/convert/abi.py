"""Call one compiled TVM kernel from Python: a private copy of the kernel `.so`, its hook
slots filled with our callbacks, `DLTensor`s over 128-byte aligned numpy buffers.

A TVM graph-executor library exports one packed-C function per fused kernel,

    int f(TVMValue* args, int* type_codes, int num_args,
          TVMValue* ret, int* ret_tcode, void* resource_handle)

taking its inputs, then its outputs, as `DLTensor*` (type code 7). The code reaches the runtime
only through exported *data* symbols that the runtime fills after `dlopen`:

    __TVMAPISetLastError        void (*)(const char*)                  -> we keep the message
    __TVMBackendAllocWorkspace  void* (*)(int, int, u64, int, int)     -> aligned numpy buffers
    __TVMBackendFreeWorkspace   int (*)(int, int, void*)
    __TVMBackendParallelLaunch  int (*)(lambda, void* closure, int)    -> one task, serially
    __TVMBackendParallelBarrier int (*)(int, env*)                     -> nothing to wait for
    __TVMBackendGetFuncFromEnv  int (*)(void*, const char*, void**)    -> refused: an external
    __TVMFuncCall               ...                                       library call
    __tvm_module_ctx            void*                                  -> any non-NULL value

Each library is loaded from a private copy (its own `dlopen` handle, so its hook slots are
ours even when DLR has the same file open), `RTLD_LOCAL`. A library compiled with
`--system-lib` instead has *undefined* `TVMBackend*` functions and registers its kernels from a
constructor: for those, a small C shim (shim.c, compiled with gcc on first use and cached like
the builder's kernels) is loaded `RTLD_GLOBAL` first; it defines the functions and forwards
them to the same callbacks.

Nothing here is safe against a kernel that crashes: callers run it in a child process
(harness.py). Pure ctypes and numpy: no dlr, no onnx.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.convert import ConvertError

ALIGNMENT = 128  # what TVM's own allocator gives; its code may assume 64-byte aligned data
KDL_CPU = 1
TYPE_CODE_DLTENSOR = 7
SHIM_SOURCE = Path(__file__).with_name("shim.c")
# The runtime functions a --system-lib library leaves undefined (libtvm_runtime provides them).
SYSTEM_LIB_SYMBOLS = frozenset(
    {
        "TVMAPISetLastError",
        "TVMBackendAllocWorkspace",
        "TVMBackendFreeWorkspace",
        "TVMBackendParallelLaunch",
        "TVMBackendParallelBarrier",
        "TVMBackendRegisterSystemLibSymbol",
        "TVMBackendGetFuncFromEnv",
        "TVMFuncCall",
    }
)
_DTYPE_CODES = {"i": 0, "u": 1, "f": 2}


class DLTensor(ctypes.Structure):
    """DLPack's tensor (48 bytes on LP64), as every TVM version since 0.4 passes it."""

    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("dtype_code", ctypes.c_uint8),
        ("dtype_bits", ctypes.c_uint8),
        ("dtype_lanes", ctypes.c_uint16),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    )


class ParallelEnv(ctypes.Structure):
    """TVMParallelGroupEnv: what a parallel lambda reads its task count from."""

    _fields_ = (("sync_handle", ctypes.c_void_p), ("num_task", ctypes.c_int32))


_PACKED_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_void_p,
)
_LAMBDA = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ParallelEnv), ctypes.c_void_p)
_SET_ERROR = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_ALLOC = ctypes.CFUNCTYPE(
    ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int
)
_FREE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_BARRIER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_GET_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)
)
_FUNC_CALL = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
)


class KernelCallError(ConvertError):
    """A kernel returned non-zero; the message is what it passed to TVMAPISetLastError."""


def aligned_empty(
    shape: Sequence[int], dtype: str | np.dtype[np.generic] = "float32"
) -> NDArray[np.generic]:
    """An uninitialised C-ordered array whose data starts on an `ALIGNMENT`-byte boundary."""
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * dt.itemsize + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + count * dt.itemsize].view(dt).reshape(tuple(shape))


def aligned_copy(array: NDArray[np.generic]) -> NDArray[np.generic]:
    """`array` copied into an aligned, C-ordered buffer."""
    out = aligned_empty(array.shape, array.dtype)
    out[...] = array
    return out


class _Hooks:
    """The callbacks behind the hook slots; one set per library, kept alive with it."""

    def __init__(self) -> None:
        self.last_error = ""
        self.external_calls: list[str] = []
        self._workspaces: dict[int, NDArray[np.uint8]] = {}
        self._lock = threading.Lock()
        self.set_error = _SET_ERROR(self._set_error)
        self.alloc = _ALLOC(self._alloc)
        self.free = _FREE(self._free)
        self.launch = _LAUNCH(self._launch)
        self.barrier = _BARRIER(lambda _task, _env: 0)
        self.get_func = _GET_FUNC(self._get_func)
        self.func_call = _FUNC_CALL(self._func_call)

    def _set_error(self, message: bytes | None) -> None:
        self.last_error = (message or b"").decode("utf-8", errors="replace")

    def _alloc(self, _device: int, _device_id: int, nbytes: int, _code: int, _bits: int) -> int:
        buffer = np.empty(int(nbytes) + ALIGNMENT, dtype=np.uint8)
        address = buffer.ctypes.data + (-buffer.ctypes.data) % ALIGNMENT
        with self._lock:
            self._workspaces[address] = buffer
        return address

    def _free(self, _device: int, _device_id: int, pointer: int | None) -> int:
        with self._lock:
            return 0 if self._workspaces.pop(pointer or 0, None) is not None else -1

    def _launch(self, flambda: int | None, closure: int | None, _num_task: int) -> int:
        # One task that does all the work: the lambda splits by env->num_task.
        env = ParallelEnv(None, 1)
        return int(_LAMBDA(flambda or 0)(0, ctypes.byref(env), closure))

    def _get_func(self, _module: int | None, name: bytes | None, _out: object) -> int:
        text = (name or b"").decode("utf-8", errors="replace")
        self.external_calls.append(text)
        self.last_error = f"the kernel calls the external function {text!r}, which is not available"
        return -1

    def _func_call(self, *_args: object) -> int:
        self.last_error = "the kernel calls an external packed function, which is not available"
        return -1


_SLOTS = (
    ("__TVMAPISetLastError", "set_error"),
    ("__TVMBackendAllocWorkspace", "alloc"),
    ("__TVMBackendFreeWorkspace", "free"),
    ("__TVMBackendParallelLaunch", "launch"),
    ("__TVMBackendParallelBarrier", "barrier"),
    ("__TVMBackendGetFuncFromEnv", "get_func"),
    ("__TVMFuncCall", "func_call"),
)
_shim_lock = threading.Lock()
_shim: ctypes.CDLL | None = None


def shim_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the compiled shim is kept: `$XDG_CACHE_HOME/lfv-edge/convert` (or ~/.cache)."""
    xdg = environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lfv-edge" / "convert"


def _compile_shim(compiler: str = "gcc") -> Path:
    """shim.c → a cached shared object (keyed by the source's hash)."""
    code = SHIM_SOURCE.read_bytes()
    key = hashlib.sha256(code + compiler.encode()).hexdigest()[:16]
    target = shim_cache_dir() / f"lfv_syslib_shim-{key}.so"
    if target.is_file():
        return target
    if shutil.which(compiler) is None:
        msg = f"this kernel library was compiled with --system-lib; calling it needs {compiler} to build a small runtime shim (apt-get install gcc)"
        raise ConvertError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [
            compiler,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-o",
            str(partial),
            str(SHIM_SOURCE),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            msg = f"{compiler} failed to build the system-lib shim: {completed.stderr.strip()}"
            raise ConvertError(msg)
        partial.replace(target)
    return target


def _load_shim(hooks: _Hooks) -> ctypes.CDLL:
    global _shim
    with _shim_lock:
        if _shim is None:
            _shim = ctypes.CDLL(str(_compile_shim()), mode=ctypes.RTLD_GLOBAL)
        shim = _shim
    shim.lfv_shim_set_hooks(
        ctypes.cast(hooks.set_error, ctypes.c_void_p),
        ctypes.cast(hooks.alloc, ctypes.c_void_p),
        ctypes.cast(hooks.free, ctypes.c_void_p),
        ctypes.cast(hooks.launch, ctypes.c_void_p),
        ctypes.cast(hooks.get_func, ctypes.c_void_p),
    )
    return shim


class KernelLibrary:
    """A private, loaded copy of a kernel library whose functions we can call one by one.

    `system_lib`: the library leaves the TVMBackend* functions undefined (compiled with
    --system-lib); the shim provides them. Only one system-lib library per process can be
    called at a time (the shim forwards to the most recent library's callbacks).
    """

    def __init__(self, path: Path, *, system_lib: bool = False) -> None:
        self.path = path
        self.hooks = _Hooks()
        if system_lib:
            _load_shim(self.hooks)
        # A private copy: its own dlopen handle, so its hook slots are ours even when DLR has
        # the same file open. The file can go once mapped.
        with tempfile.TemporaryDirectory(prefix="lfv-kernels-") as scratch:
            private = Path(scratch) / "kernels.so"
            shutil.copyfile(path, private)
            try:
                self._lib = ctypes.CDLL(str(private), mode=ctypes.RTLD_LOCAL)
            except OSError as exc:
                msg = f"{path}: cannot load the kernel library: {exc}"
                raise ConvertError(msg) from exc
        self._ctx = ctypes.c_int64(0)
        self._fill_slots()
        self._functions: dict[str, Callable[..., int]] = {}

    def _fill_slots(self) -> None:
        for symbol, attribute in _SLOTS:
            try:
                slot = ctypes.c_void_p.in_dll(self._lib, symbol)
            except ValueError:
                continue
            slot.value = ctypes.cast(getattr(self.hooks, attribute), ctypes.c_void_p).value
        try:
            ctx = ctypes.c_void_p.in_dll(self._lib, "__tvm_module_ctx")
        except ValueError:
            return
        ctx.value = ctypes.addressof(self._ctx)

    def has(self, name: str) -> bool:
        """Whether the library exports a function `name`."""
        try:
            self._function(name)
        except KernelCallError:
            return False
        return True

    def _function(self, name: str) -> Callable[..., int]:
        found = self._functions.get(name)
        if found is None:
            try:
                found = _PACKED_FUNC((name, self._lib))
            except AttributeError as exc:
                msg = f"the kernel library does not export {name!r}"
                raise KernelCallError(msg) from exc
            self._functions[name] = found
        return found

    def call(
        self, name: str, arrays: Sequence[NDArray[np.generic]], *, flatten: bool = False
    ) -> None:
        """Call kernel `name` on `arrays` (inputs then outputs, written in place).

        Every array must be C-contiguous and aligned (`aligned_empty`). `flatten` passes each
        as 1-D, as the graph executor does for nodes with `flatten_data` "1".

        Raises:
            KernelCallError: the kernel returned non-zero (with its message).
        """
        function = self._function(name)
        count = len(arrays)
        tensors = (DLTensor * count)()
        shapes = []
        for index, array in enumerate(arrays):
            if not array.flags.c_contiguous or array.ctypes.data % 64:
                msg = f"{name}: argument {index} is not an aligned C-contiguous buffer"
                raise ConvertError(msg)
            dims = (array.size,) if flatten else array.shape
            shape = (ctypes.c_int64 * max(len(dims), 1))(*dims)
            shapes.append(shape)
            tensor = tensors[index]
            tensor.data = array.ctypes.data
            tensor.device_type = KDL_CPU
            tensor.device_id = 0
            tensor.ndim = len(dims)
            tensor.dtype_code = _DTYPE_CODES[array.dtype.kind]
            tensor.dtype_bits = array.dtype.itemsize * 8
            tensor.dtype_lanes = 1
            tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
            tensor.strides = None
            tensor.byte_offset = 0
        values = (ctypes.c_void_p * count)(*(ctypes.addressof(t) for t in tensors))
        codes = (ctypes.c_int * count)(*([TYPE_CODE_DLTENSOR] * count))
        ret_value = ctypes.c_int64(0)
        ret_code = ctypes.c_int(0)
        self.hooks.last_error = ""
        rc = function(
            ctypes.cast(values, ctypes.c_void_p),
            codes,
            count,
            ctypes.cast(ctypes.byref(ret_value), ctypes.c_void_p),
            ctypes.byref(ret_code),
            None,
        )
        if rc != 0:
            reason = self.hooks.last_error or "no message"
            msg = f"{name} returned {rc}: {reason}"
            raise KernelCallError(msg)
