"""Building ONNX graphs: the only module that imports `onnx`.

`OnnxGraph` collects nodes over `Value`s. A value is either symbolic (an ONNX tensor name) or
a constant known now (a numpy array). Data-movement helpers (`reshape`, `transpose`,
`expand`, `flat_gather`) fold constants with numpy instead of emitting nodes, so a packed
weight (NCHWc `OIHW8i8o`) is unpacked to plain `OIHW` once, here, and the exported model
holds the plain tensor: layout transforms become no-ops. Every other op is emitted as a node,
its constant inputs as initializers. Shapes are tracked by the caller (the package graph
states every shape), so no shape inference runs.

Opset 17, IR version 8: what ONNX Runtime ≥ 1.13, TensorRT 8.6 and OpenVINO 2023 all load.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "lfv-edge convert"

_ELEMENT_TYPES = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
}


@dataclass(frozen=True, slots=True, eq=False)
class Value:
    """A tensor in the graph: symbolic (`name`) or constant (`const`), with its shape."""

    shape: tuple[int, ...]
    name: str | None = None
    const: NDArray[np.generic] | None = field(default=None, repr=False)

    @property
    def is_const(self) -> bool:
        """Known now (an initializer when used)."""
        return self.const is not None

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


class OnnxGraph:
    """Nodes, inputs, outputs and initializers of one ONNX graph under construction."""

    def __init__(self, name: str = "lfv_edge_converted") -> None:
        self.name = name
        self._nodes: list[onnx.NodeProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._initializers: list[onnx.TensorProto] = []
        # id(array) → (initializer name, array): holding the array keeps its id unique.
        self._materialized: dict[int, tuple[str, NDArray[np.generic]]] = {}
        self._counter = itertools.count()
        self._used_names: set[str] = set()

    # -- names and values

    def _fresh(self, hint: str) -> str:
        while True:
            name = f"{hint}_{next(self._counter)}"
            if name not in self._used_names:
                self._used_names.add(name)
                return name

    def input(self, name: str, shape: Sequence[int], dtype: str = "float32") -> Value:
        """A graph input."""
        if name in self._used_names:
            msg = f"duplicate tensor name {name!r}"
            raise ValueError(msg)
        self._used_names.add(name)
        self._inputs.append(
            helper.make_tensor_value_info(name, _ELEMENT_TYPES[np.dtype(dtype)], list(shape))
        )
        return Value(tuple(int(d) for d in shape), name=name)

    def input_with_default(self, name: str, array: NDArray[np.generic]) -> Value:
        """A graph input that falls back to `array` when not fed (an overridable initializer)."""
        value = self.input(name, array.shape, str(array.dtype))
        self._initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return value

    @staticmethod
    def const(array: NDArray[np.generic] | float | int, dtype: str = "float32") -> Value:
        """A constant value (becomes an initializer only if a node uses it)."""
        data = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        return Value(tuple(int(d) for d in data.shape), const=data)

    def name_of(self, value: Value) -> str:
        """The ONNX name of `value`, adding an initializer for a constant on first use."""
        if value.name is not None:
            return value.name
        if value.const is None:
            msg = "a value is neither named nor constant"
            raise ValueError(msg)
        key = id(value.const)
        existing = self._materialized.get(key)
        if existing is not None:
            return existing[0]
        name = self._fresh("const")
        self._initializers.append(numpy_helper.from_array(value.const, name))
        self._materialized[key] = (name, value.const)
        return name

    # -- nodes

    def op(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        shape: Sequence[int],
        *,
        hint: str | None = None,
        **attrs: Any,  # noqa: ANN401 - ONNX attributes of any type
    ) -> Value:
        """Emit one node with one output of `shape` (None inputs are ONNX's empty inputs)."""
        out = self._fresh(hint or op_type.lower())
        names = ["" if v is None else self.name_of(v) for v in inputs]
        self._nodes.append(helper.make_node(op_type, names, [out], **attrs))
        return Value(tuple(int(d) for d in shape), name=out)

    def shape_const(self, dims: Sequence[int]) -> Value:
        """An int64 constant (shapes, axes, indices)."""
        return self.const(np.asarray(list(dims), dtype=np.int64), dtype="int64")

    # -- data movement that folds constants

    def reshape(self, value: Value, shape: Sequence[int]) -> Value:
        """Reshape (row-major, like numpy)."""
        dims = tuple(int(d) for d in shape)
        if dims == value.shape:
            return value
        if value.const is not None:
            return Value(dims, const=np.ascontiguousarray(value.const.reshape(dims)))
        return self.op("Reshape", [value, self.shape_const(dims)], dims)

    def transpose(self, value: Value, perm: Sequence[int]) -> Value:
        """Permute axes."""
        order = tuple(int(p) for p in perm)
        if order == tuple(range(len(order))):
            return value
        shape = tuple(value.shape[p] for p in order)
        if value.const is not None:
            return Value(shape, const=np.ascontiguousarray(value.const.transpose(order)))
        return self.op("Transpose", [value], shape, perm=list(order))

    def expand(self, value: Value, shape: Sequence[int]) -> Value:
        """Broadcast to `shape` (numpy rules)."""
        dims = tuple(int(d) for d in shape)
        if dims == value.shape:
            return value
        if value.const is not None:
            return Value(dims, const=np.ascontiguousarray(np.broadcast_to(value.const, dims)))
        return self.op("Expand", [value, self.shape_const(dims)], dims)

    def concat_flat(self, values: Sequence[Value]) -> Value:
        """The 1-D concatenation of flattened values."""
        flats = [self.reshape(v, (v.size,)) for v in values]
        if len(flats) == 1:
            return flats[0]
        total = sum(v.size for v in flats)
        consts = [v.const for v in flats if v.const is not None]
        if len(consts) == len(flats):
            return Value((total,), const=np.concatenate(consts))
        return self.op("Concat", flats, (total,), axis=0)

    def flat_gather(self, flat: Value, indices: NDArray[np.int64], shape: Sequence[int]) -> Value:
        """`flat[indices]` reshaped to `shape`; a slice or a reshape when the indices allow."""
        dims = tuple(int(d) for d in shape)
        index = np.ascontiguousarray(indices.reshape(-1), dtype=np.int64)
        if flat.const is not None:
            return Value(dims, const=np.ascontiguousarray(flat.const[index].reshape(dims)))
        if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
            if index[0] == 0 and index.size == flat.size:
                return self.reshape(flat, dims)
            start = int(index[0])
            sliced = self.op(
                "Slice",
                [flat, self.shape_const([start]), self.shape_const([start + index.size])],
                (index.size,),
            )
            return self.reshape(sliced, dims)
        gathered = self.op(
            "Gather", [flat, self.const(index, dtype="int64")], (index.size,), axis=0
        )
        return self.reshape(gathered, dims)

    # -- outputs and the model

    def output(self, value: Value, name: str, dtype: str = "float32") -> None:
        """Declare a graph output called `name` (an Identity node renames when needed)."""
        if name in self._used_names and name != value.name:
            msg = f"duplicate tensor name {name!r}"
            raise ValueError(msg)
        is_input = any(i.name == value.name for i in self._inputs)
        if value.name != name or is_input or value.const is not None:
            self._used_names.add(name)
            self._nodes.append(helper.make_node("Identity", [self.name_of(value)], [name]))
        self._outputs.append(
            helper.make_tensor_value_info(name, _ELEMENT_TYPES[np.dtype(dtype)], list(value.shape))
        )

    def to_model(self, metadata: Mapping[str, str] | None = None, doc: str = "") -> bytes:
        """The serialised, checked ModelProto."""
        graph = helper.make_graph(
            self._nodes, self.name, self._inputs, self._outputs, initializer=self._initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        for key, text in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key = key
            entry.value = text
        onnx.checker.check_model(model)
        return bytes(model.SerializeToString())


def read_metadata(model: bytes) -> dict[str, str]:
    """metadata_props of a serialised model."""
    proto = onnx.load_from_string(model)
    return {entry.key: entry.value for entry in proto.metadata_props}


def op_types(model: bytes) -> list[str]:
    """Node op types of a serialised model, in order (for reports and tests)."""
    proto = onnx.load_from_string(model)
    return [node.op_type for node in proto.graph.node]
