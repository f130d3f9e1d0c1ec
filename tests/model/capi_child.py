"""A plain DLR C-API run, for comparing our runner with: `python -m tests.model.capi_child`.

    python -m tests.model.capi_child LIBDLR FOLDER INPUTS.npz OUTPUTS.npz

Loads `LIBDLR` with ctypes (as the dlr Python layer does: RTLD_LOCAL), creates the model on
the CPU, sets every array of INPUTS.npz by name with `SetDLRInput`, runs once and writes the
outputs (`out0`, `out1`, …, in DLR's output order and dtypes) to OUTPUTS.npz. Nothing of
lfv-edge or of the dlr Python package is imported. Runs in a child because some folders kill
the process that loads them. Exit 2: DLR refused (its last error on stderr).
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import POINTER, byref, c_char_p, c_int, c_int64, c_void_p
from typing import Any

import numpy as np

CPU = 1


def _check(lib: ctypes.CDLL, rc: int, what: str) -> None:
    if rc != 0:
        error = lib.DLRGetLastError()
        print(f"{what} failed: {ctypes.string_at(error).decode(errors='replace')}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str]) -> int:
    libdlr, folder, inputs_path, outputs_path = argv
    lib = ctypes.CDLL(libdlr)
    lib.DLRGetLastError.restype = c_void_p
    handle = c_void_p()
    _check(lib, lib.CreateDLRModel(byref(handle), folder.encode(), CPU, 0), "CreateDLRModel")
    with np.load(inputs_path) as inputs:
        arrays = {name: np.ascontiguousarray(inputs[name]) for name in inputs.files}
    for name, array in arrays.items():
        shape = np.array(array.shape, dtype=np.int64)
        rc = lib.SetDLRInput(
            byref(handle),
            c_char_p(name.encode()),
            shape.ctypes.data_as(POINTER(c_int64)),
            array.ctypes.data_as(c_void_p),
            c_int(array.ndim),
        )
        _check(lib, rc, f"SetDLRInput({name})")
    _check(lib, lib.RunDLRModel(byref(handle)), "RunDLRModel")
    count = c_int()
    _check(lib, lib.GetDLRNumOutputs(byref(handle), byref(count)), "GetDLRNumOutputs")
    outputs: dict[str, Any] = {}
    for index in range(count.value):
        size, ndim, dtype = c_int64(), c_int(), c_char_p()
        _check(lib, lib.GetDLROutputSizeDim(byref(handle), index, byref(size), byref(ndim)), "size")
        _check(lib, lib.GetDLROutputType(byref(handle), index, byref(dtype)), "type")
        shape = np.zeros(ndim.value, dtype=np.int64)
        _check(
            lib,
            lib.GetDLROutputShape(byref(handle), index, shape.ctypes.data_as(POINTER(c_int64))),
            "GetDLROutputShape",
        )
        out = np.zeros(size.value, dtype=np.dtype((dtype.value or b"float32").decode()))
        _check(lib, lib.GetDLROutput(byref(handle), index, out.ctypes.data_as(c_void_p)), "output")
        outputs[f"out{index}"] = out.reshape(tuple(shape))
    _check(lib, lib.DeleteDLRModel(byref(handle)), "DeleteDLRModel")
    np.savez(outputs_path, **outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
