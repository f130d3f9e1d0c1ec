"""`lfv-edge convert`: a compiled LFV/DLR package → an equivalent ONNX model, verified kernel by kernel.

    names.py       a fused kernel's name → the ops it computes
    layouts.py     NCHWc activations, packed weights, broadcast operands ↔ plain tensors
    onnx_graph.py  the ONNX graph builder (the only module importing `onnx`)
    plans.py       candidate plans per kernel: recipes, index-ramp gather maps, probed constants
    abi.py         calling one compiled kernel (hook slots, DLTensor, the system-lib shim)
    executor.py    the package's graph run over its own kernels
    verify.py      which candidate matches the real kernel (twice)
    assemble.py    verified plans → one ONNX model with the package's names and shapes
    worker.py      the child process that makes every kernel call
    harness.py     runs children, survives their crashes
    e2e.py         the converted model against DLR: raw outputs and LFV verdicts
    report.py      the per-kernel report
    api.py         convert_package(): the whole conversion

How it works and what converts: docs/convert.md. ONNX Runtime is reached through
model/onnx_runner.py.

Errors:

    LfvEdgeError
    └── ConvertError      the source cannot be converted at all (missing files, another CPU
                          architecture, a GPU build), or a child failed outside any kernel
"""

from __future__ import annotations

from lfv_edge.errors import LfvEdgeError


class ConvertError(LfvEdgeError):
    """A package could not be converted; the message says which kernel or file and why."""


__all__ = ["ConvertError"]
