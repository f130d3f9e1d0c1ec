"""`lfv-edge convert`: a compiled LFV/DLR package → an equivalent ONNX model, verified kernel by kernel.

Placeholder docstring; see docs/convert.md.
"""

from __future__ import annotations

from lfv_edge.errors import LfvEdgeError


class ConvertError(LfvEdgeError):
    """A package could not be converted; the message says which kernel or file and why."""


__all__ = ["ConvertError"]
