"""TVM graph JSON and weights for our kernels: `GraphBuilder` (raw) and `Network` (typed layers).

`GraphBuilder` writes the graph-executor JSON of docs/dlr-runtime.md §4: nodes in execution order,
the data input as node 0 (DLR reads the input shape by position, so it must be the first arg
node), each weight placed just before its first consumer, `node_row_ptr`, `heads` in the
order given to `set_outputs`, and per-entry `dltype` / `storage_id` / `shape`. Every `tvm_op`
attr is a JSON string. By default intermediate tensors whose lifetimes do not overlap share a
storage id (at 1000×1000 a segmenter's activations would otherwise take hundreds of MB).

`Network` is the layer API tests and demos use: each call checks shapes, records a `Layer`
(so reference.py can evaluate the same network in float64) and maps to exactly one kernel
symbol of kernels.c, with the stride/ReLU variant in the symbol name so no attribute is ever
guessed. PyTorch → `Network` (weights as float32 numpy arrays; batch 1, NCHW):

    nn.Conv2d(Ci, Co, K, stride=S, padding=K//2)   conv2d(x, w, b, stride=S)   K 1|3, S 1|2
      … followed by nn.ReLU                        conv2d(…, relu=True)
      … with bias=False                            pass b = zeros(Co)
      … followed by nn.BatchNorm2d (eval)          fold: w·γ/σ, (b−μ)·γ/σ+β first
    nn.Conv2d(C, C, 3, S, padding=1, groups=C)     depthwise_conv2d(x, w, b, stride=S, relu=…)
    nn.ReLU / a + b / F.relu(a + b)                relu(x) / add(a, b) / add(a, b, relu=True)
    nn.MaxPool2d(2, 2)                             maxpool2(x)
    nn.AdaptiveAvgPool2d(1) + flatten              global_avg_pool(x)          [1,C,H,W] → [1,C]
    nn.Linear(K, M)                                dense(x, w, b)
    softmax(dim=1) on [1,M] / on [1,C,H,W]         softmax(x) / softmax_channels(x)
    F.interpolate(scale_factor=f, mode="nearest")  upsample_nearest(x, f)      integer f
    F.interpolate(scale_factor=f, mode="bilinear", align_corners=False)
                                                   upsample_bilinear(x, f)     integer f
    torch.cat([a, b], dim=1)                       concat(a, b)

Pure: no dlr, no cv2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lfv_edge.modelbuild import BuildError

DTYPE = "float32"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")

OpKind = Literal[
    "conv2d",
    "depthwise_conv2d",
    "relu",
    "add",
    "maxpool2",
    "global_avg_pool",
    "dense",
    "softmax",
    "softmax_channels",
    "upsample_nearest",
    "upsample_bilinear",
    "concat",
]


def conv2d_symbol(kernel_size: int, stride: int, relu: bool) -> str:
    """Kernel symbol of a dense convolution variant, e.g. `lfv_conv2d_k3_s2_relu`."""
    return f"lfv_conv2d_k{kernel_size}_s{stride}{'_relu' if relu else ''}"


def depthwise_conv2d_symbol(stride: int, relu: bool) -> str:
    """Kernel symbol of a depthwise 3×3 convolution variant, e.g. `lfv_dwconv2d_k3_s1`."""
    return f"lfv_dwconv2d_k3_s{stride}{'_relu' if relu else ''}"


# Every symbol a Network can emit; tests check kernels.c exports each one.
KERNEL_SYMBOLS = frozenset(
    [conv2d_symbol(k, s, r) for k in (1, 3) for s in (1, 2) for r in (False, True)]
    + [depthwise_conv2d_symbol(s, r) for s in (1, 2) for r in (False, True)]
    + [
        "lfv_relu",
        "lfv_add",
        "lfv_add_relu",
        "lfv_maxpool2d_k2_s2",
        "lfv_global_avg_pool",
        "lfv_dense",
        "lfv_softmax",
        "lfv_softmax_channels",
        "lfv_upsample_nearest",
        "lfv_upsample_bilinear",
        "lfv_concat_channels",
    ]
)


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        msg = f"{what} name {name!r} must match [A-Za-z_][A-Za-z0-9_.]* (ASCII, DLR decodes errors as ASCII)"
        raise BuildError(msg)


def _check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if not dims or any(d < 1 for d in dims) or any(int(d) != d for d in shape):
        msg = f"{what}: shape {list(shape)} must be a non-empty list of positive integers"
        raise BuildError(msg)
    return dims


# ---- raw graph ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorRef:
    """One tensor of a `GraphBuilder`: a data input, a weight or an op output."""

    node: int  # creation index inside the builder (not the JSON node id)
    shape: tuple[int, ...]
    name: str


@dataclass(frozen=True, slots=True)
class _Node:
    kind: Literal["input", "weight", "op"]
    name: str
    shape: tuple[int, ...]
    func_name: str | None = None
    inputs: tuple[int, ...] = ()
    flatten: bool = False


class GraphBuilder:
    """Collects inputs, weights and kernel calls; writes graph JSON and the params mapping."""

    def __init__(self) -> None:
        self._nodes: list[_Node] = []
        self._refs: list[TensorRef] = []
        self._weights: dict[str, NDArray[np.float32]] = {}
        self._outputs: list[int] = []

    def _add(self, node: _Node) -> TensorRef:
        _check_name(node.name, node.kind)
        if any(existing.name == node.name for existing in self._nodes):
            msg = f"duplicate node name {node.name!r}"
            raise BuildError(msg)
        ref = TensorRef(node=len(self._nodes), shape=node.shape, name=node.name)
        self._nodes.append(node)
        self._refs.append(ref)
        return ref

    def _own(self, ref: TensorRef, what: str) -> int:
        if not 0 <= ref.node < len(self._refs) or self._refs[ref.node] is not ref:
            msg = f"{what}: {ref.name!r} does not belong to this graph"
            raise BuildError(msg)
        return ref.node

    def add_input(self, name: str, shape: Sequence[int]) -> TensorRef:
        """A float32 data input (the runtime's `set_input` name)."""
        return self._add(_Node("input", name, _check_shape(shape, name)))

    def add_weight(self, name: str, array: ArrayLike) -> TensorRef:
        """A weight stored in `.params` under `name` (converted to C-ordered float32)."""
        values = np.asarray(array)
        if values.dtype.kind not in "fiu":
            msg = f"weight {name!r}: dtype {values.dtype} is not numeric"
            raise BuildError(msg)
        stored = np.ascontiguousarray(values, dtype=np.float32)
        if not np.isfinite(stored).all():
            msg = f"weight {name!r} has non-finite values"
            raise BuildError(msg)
        stored.setflags(write=False)
        ref = self._add(_Node("weight", name, _check_shape(stored.shape, name)))
        self._weights[name] = stored
        return ref

    def add_op(
        self,
        func_name: str,
        inputs: Sequence[TensorRef],
        out_shape: Sequence[int],
        *,
        flatten: bool = False,
        name: str | None = None,
    ) -> TensorRef:
        """A kernel call: `func_name(*inputs, out)`; the output shape is declared, not inferred.

        `flatten=True` sets `flatten_data` "1": the runtime passes every tensor as 1-D.
        """
        _check_name(func_name, "kernel")
        op_name = name if name is not None else f"{func_name}_{len(self._nodes)}"
        sources = tuple(self._own(ref, op_name) for ref in inputs)
        return self._add(
            _Node("op", op_name, _check_shape(out_shape, op_name), func_name, sources, flatten)
        )

    def set_outputs(self, outputs: Sequence[TensorRef]) -> None:
        """The graph outputs (`heads`), in the order the runtime returns them."""
        ids = [self._own(ref, "output") for ref in outputs]
        if not ids:
            msg = "a graph needs at least one output"
            raise BuildError(msg)
        if len(set(ids)) != len(ids):
            msg = "the same tensor is listed twice as an output"
            raise BuildError(msg)
        for node_id in ids:
            if self._nodes[node_id].kind != "op":
                msg = f"output {self._nodes[node_id].name!r} must be the result of a kernel call"
                raise BuildError(msg)
        self._outputs = ids

    def params(self) -> dict[str, NDArray[np.float32]]:
        """Weights by name, in graph order (what `encode_params` writes)."""
        order = self._emit_order()
        return {
            self._nodes[i].name: self._weights[self._nodes[i].name]
            for i in order
            if self._nodes[i].kind == "weight"
        }

    def _emit_order(self) -> list[int]:
        """Builder indices in JSON node order: inputs, then each op preceded by its new weights."""
        used = {source for node in self._nodes for source in node.inputs}
        for index, node in enumerate(self._nodes):
            if node.kind != "op" and index not in used:
                msg = f"{node.kind} {node.name!r} is never used by a kernel call"
                raise BuildError(msg)
        order = [i for i, node in enumerate(self._nodes) if node.kind == "input"]
        if not order:
            msg = "the graph has no data input"
            raise BuildError(msg)
        placed = set(order)
        for index, node in enumerate(self._nodes):
            if node.kind != "op":
                continue
            for source in node.inputs:
                if source not in placed:  # a weight: emit right before its first consumer
                    order.append(source)
                    placed.add(source)
            order.append(index)
            placed.add(index)
        return order

    def _storage_ids(self, order: list[int], share: bool) -> dict[int, int]:
        """Storage id per builder index; shared only between non-overlapping op outputs."""
        storage: dict[int, int] = {}
        next_id = 0
        for index in order:
            if self._nodes[index].kind != "op" or not share:
                storage[index] = next_id
                next_id += 1
        if not share:
            return storage
        position = {index: pos for pos, index in enumerate(order)}
        last_use: dict[int, int] = {}
        for index in order:
            for source in self._nodes[index].inputs:
                last_use[source] = position[index]
        sizes: dict[int, int] = {}  # storage id -> largest element count placed in it
        free: list[int] = []
        for index in order:
            node = self._nodes[index]
            if node.kind != "op":
                continue
            need = int(np.prod(node.shape))
            fitting = [sid for sid in free if sizes[sid] >= need]
            if fitting:
                sid = min(fitting, key=lambda s: sizes[s])
            elif free:
                sid = max(free, key=lambda s: sizes[s])  # grown to `need` below
            else:
                sid = next_id
                next_id += 1
            if sid in free:
                free.remove(sid)
            sizes[sid] = max(sizes.get(sid, 0), need)
            storage[index] = sid
            # Inputs are released only after the output is placed: kernels never see their
            # output aliasing one of their inputs.
            free.extend(
                storage[source]
                for source in set(node.inputs)
                if self._nodes[source].kind == "op"
                and source not in self._outputs
                and last_use[source] == position[index]
            )
        return storage

    def to_json(self, *, indent: int | None = None, share_storage: bool = True) -> str:
        """The graph-executor JSON (docs/dlr-runtime.md §4)."""
        if not self._outputs:
            msg = "call set_outputs() before writing the graph"
            raise BuildError(msg)
        order = self._emit_order()
        json_id = {index: position for position, index in enumerate(order)}
        storage = self._storage_ids(order, share_storage)
        nodes: list[dict[str, object]] = []
        for index in order:
            node = self._nodes[index]
            if node.kind != "op":
                nodes.append({"op": "null", "name": node.name, "inputs": []})
                continue
            nodes.append(
                {
                    "op": "tvm_op",
                    "name": node.name,
                    "attrs": {  # the runtime requires every attr value to be a JSON string
                        "func_name": node.func_name,
                        "num_inputs": str(len(node.inputs)),
                        "num_outputs": "1",
                        "flatten_data": "1" if node.flatten else "0",
                    },
                    "inputs": [[json_id[source], 0, 0] for source in node.inputs],
                }
            )
        graph = {
            "nodes": nodes,
            "arg_nodes": [json_id[i] for i in order if self._nodes[i].kind != "op"],
            "node_row_ptr": list(range(len(order) + 1)),  # one output per node
            "heads": [[json_id[i], 0, 0] for i in self._outputs],
            "attrs": {
                "dltype": ["list_str", [DTYPE] * len(order)],
                "storage_id": ["list_int", [storage[i] for i in order]],
                "shape": ["list_shape", [list(self._nodes[i].shape) for i in order]],
            },
        }
        return json.dumps(graph, indent=indent)


# ---- typed layers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor of a `Network`: its position in the network and its NCHW (or [1,K]) shape."""

    index: int
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Layer:
    """One recorded layer: what the kernel computes, enough for reference.py to redo it."""

    kind: OpKind
    name: str
    func_name: str
    inputs: tuple[Tensor, ...]
    weights: tuple[tuple[str, NDArray[np.float32]], ...]  # (params name, array), argument order
    output: Tensor
    stride: int = 1
    relu: bool = False
    factor: tuple[int, int] = (1, 1)  # upsampling (rows, columns)


def _frozen(array: ArrayLike, what: str) -> NDArray[np.float32]:
    values = np.asarray(array)
    if values.dtype.kind not in "fiu":
        msg = f"{what}: dtype {values.dtype} is not numeric"
        raise BuildError(msg)
    stored = np.array(values, dtype=np.float32, order="C", copy=True)
    stored.setflags(write=False)
    return stored


class Network:
    """A single-input float32 network built from kernels.c's ops, recorded layer by layer."""

    def __init__(self, name: str = "network") -> None:
        self.name = name
        self._tensors: list[Tensor] = []
        self._layers: list[Layer] = []
        self._input: Tensor | None = None
        self._input_name = "data"
        self._outputs: tuple[Tensor, ...] = ()
        self._names: set[str] = set()

    # -- bookkeeping

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Layers in execution order."""
        return tuple(self._layers)

    @property
    def input_tensor(self) -> Tensor:
        """The data input."""
        if self._input is None:
            msg = f"{self.name}: no input yet (call input() first)"
            raise BuildError(msg)
        return self._input

    @property
    def input_name(self) -> str:
        """The data input's name in the graph (what DLR's `set_input` expects)."""
        return self._input_name

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the data input, e.g. (1, 3, H, W)."""
        return self.input_tensor.shape

    @property
    def outputs(self) -> tuple[Tensor, ...]:
        """The outputs, in the order the runtime returns them."""
        return self._outputs

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the outputs, in order."""
        return [tensor.shape for tensor in self._outputs]

    def _new_tensor(self, shape: tuple[int, ...]) -> Tensor:
        tensor = Tensor(index=len(self._tensors), shape=shape)
        self._tensors.append(tensor)
        return tensor

    def _own(self, tensor: Tensor, what: str) -> Tensor:
        if not 0 <= tensor.index < len(self._tensors) or self._tensors[tensor.index] is not tensor:
            msg = f"{self.name}: {what}: the tensor does not belong to this network"
            raise BuildError(msg)
        return tensor

    def _layer_name(self, kind: str, name: str | None) -> str:
        chosen = name if name is not None else f"{kind}{len(self._layers)}"
        _check_name(chosen, "layer")
        if chosen in self._names or chosen == self._input_name:
            msg = f"{self.name}: duplicate layer name {chosen!r}"
            raise BuildError(msg)
        self._names.add(chosen)
        return chosen

    def _record(
        self,
        kind: OpKind,
        name: str,
        func_name: str,
        inputs: tuple[Tensor, ...],
        out_shape: tuple[int, ...],
        weights: tuple[tuple[str, NDArray[np.float32]], ...] = (),
        *,
        stride: int = 1,
        relu: bool = False,
        factor: tuple[int, int] = (1, 1),
    ) -> Tensor:
        output = self._new_tensor(out_shape)
        layer = Layer(kind, name, func_name, inputs, weights, output, stride, relu, factor)
        self._layers.append(layer)
        return output

    def _nchw(self, tensor: Tensor, what: str) -> tuple[int, int, int]:
        self._own(tensor, what)
        if len(tensor.shape) != 4 or tensor.shape[0] != 1:
            msg = f"{self.name}: {what} needs a [1,C,H,W] tensor, got {list(tensor.shape)}"
            raise BuildError(msg)
        return tensor.shape[1], tensor.shape[2], tensor.shape[3]

    # -- layers

    def input(self, shape: Sequence[int], *, name: str = "data") -> Tensor:
        """The single float32 data input, normally (1, 3, H, W)."""
        if self._input is not None:
            msg = f"{self.name}: the network already has an input"
            raise BuildError(msg)
        _check_name(name, "input")
        dims = _check_shape(shape, name)
        if dims[0] != 1:
            msg = f"{self.name}: only batch 1 is supported, input shape {list(dims)}"
            raise BuildError(msg)
        self._input_name = name
        self._input = self._new_tensor(dims)
        return self._input

    def conv2d(
        self,
        x: Tensor,
        weight: ArrayLike,
        bias: ArrayLike,
        *,
        stride: int = 1,
        relu: bool = False,
        name: str | None = None,
    ) -> Tensor:
        """Conv2d(Ci, Co, K, stride, padding=K//2) + bias, K ∈ {1, 3}, optional fused ReLU."""
        layer = self._layer_name("conv", name)
        ci, h, w = self._nchw(x, layer)
        wt, b = _frozen(weight, f"{layer} weight"), _frozen(bias, f"{layer} bias")
        if (
            wt.ndim != 4
            or wt.shape[1] != ci
            or wt.shape[2] != wt.shape[3]
            or wt.shape[2] not in (1, 3)
        ):
            msg = f"{layer}: weight shape {list(wt.shape)} must be [Co,{ci},K,K] with K 1 or 3"
            raise BuildError(msg)
        co, k = wt.shape[0], wt.shape[2]
        if b.shape != (co,):
            msg = f"{layer}: bias shape {list(b.shape)} must be [{co}]"
            raise BuildError(msg)
        if stride not in (1, 2):
            msg = f"{layer}: stride {stride} is not supported (1 or 2)"
            raise BuildError(msg)
        pad = k // 2
        out = (1, co, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        weights = ((f"{layer}_weight", wt), (f"{layer}_bias", b))
        symbol = conv2d_symbol(k, stride, relu)
        return self._record("conv2d", layer, symbol, (x,), out, weights, stride=stride, relu=relu)

    def depthwise_conv2d(
        self,
        x: Tensor,
        weight: ArrayLike,
        bias: ArrayLike,
        *,
        stride: int = 1,
        relu: bool = False,
        name: str | None = None,
    ) -> Tensor:
        """Conv2d(C, C, 3, stride, padding=1, groups=C) + bias, optional fused ReLU."""
        layer = self._layer_name("dwconv", name)
        c, h, w = self._nchw(x, layer)
        wt, b = _frozen(weight, f"{layer} weight"), _frozen(bias, f"{layer} bias")
        if wt.shape != (c, 1, 3, 3) or b.shape != (c,):
            msg = f"{layer}: weight {list(wt.shape)} / bias {list(b.shape)} must be [{c},1,3,3] / [{c}]"
            raise BuildError(msg)
        if stride not in (1, 2):
            msg = f"{layer}: stride {stride} is not supported (1 or 2)"
            raise BuildError(msg)
        out = (1, c, (h - 1) // stride + 1, (w - 1) // stride + 1)
        weights = ((f"{layer}_weight", wt), (f"{layer}_bias", b))
        symbol = depthwise_conv2d_symbol(stride, relu)
        return self._record(
            "depthwise_conv2d", layer, symbol, (x,), out, weights, stride=stride, relu=relu
        )

    def relu(self, x: Tensor, *, name: str | None = None) -> Tensor:
        """max(x, 0), any shape."""
        layer = self._layer_name("relu", name)
        self._own(x, layer)
        return self._record("relu", layer, "lfv_relu", (x,), x.shape)

    def add(self, a: Tensor, b: Tensor, *, relu: bool = False, name: str | None = None) -> Tensor:
        """a + b (same shapes, e.g. a residual connection), optional fused ReLU."""
        layer = self._layer_name("add", name)
        self._own(a, layer)
        self._own(b, layer)
        if a.shape != b.shape:
            msg = f"{layer}: shapes {list(a.shape)} and {list(b.shape)} differ"
            raise BuildError(msg)
        symbol = "lfv_add_relu" if relu else "lfv_add"
        return self._record("add", layer, symbol, (a, b), a.shape, relu=relu)

    def maxpool2(self, x: Tensor, *, name: str | None = None) -> Tensor:
        """MaxPool2d(2, stride 2), floor: [1,C,H,W] → [1,C,H//2,W//2]."""
        layer = self._layer_name("maxpool", name)
        c, h, w = self._nchw(x, layer)
        if h < 2 or w < 2:
            msg = f"{layer}: input {list(x.shape)} is too small for a 2×2 pool"
            raise BuildError(msg)
        return self._record("maxpool2", layer, "lfv_maxpool2d_k2_s2", (x,), (1, c, h // 2, w // 2))

    def global_avg_pool(self, x: Tensor, *, name: str | None = None) -> Tensor:
        """Mean over H and W: [1,C,H,W] → [1,C]."""
        layer = self._layer_name("gap", name)
        c, _, _ = self._nchw(x, layer)
        return self._record("global_avg_pool", layer, "lfv_global_avg_pool", (x,), (1, c))

    def dense(
        self, x: Tensor, weight: ArrayLike, bias: ArrayLike, *, name: str | None = None
    ) -> Tensor:
        """x · weightᵀ + bias: [1,K] · [M,K]ᵀ + [M] → [1,M] (= torch.nn.Linear(K, M))."""
        layer = self._layer_name("dense", name)
        self._own(x, layer)
        wt, b = _frozen(weight, f"{layer} weight"), _frozen(bias, f"{layer} bias")
        if len(x.shape) != 2 or x.shape[0] != 1:
            msg = f"{layer}: input must be [1,K], got {list(x.shape)}"
            raise BuildError(msg)
        if wt.ndim != 2 or wt.shape[1] != x.shape[1] or b.shape != (wt.shape[0],):
            msg = f"{layer}: weight {list(wt.shape)} / bias {list(b.shape)} must be [M,{x.shape[1]}] / [M]"
            raise BuildError(msg)
        weights = ((f"{layer}_weight", wt), (f"{layer}_bias", b))
        return self._record("dense", layer, "lfv_dense", (x,), (1, wt.shape[0]), weights)

    def softmax(self, x: Tensor, *, name: str | None = None) -> Tensor:
        """Softmax over the last axis of [1,M]."""
        layer = self._layer_name("softmax", name)
        self._own(x, layer)
        if len(x.shape) != 2 or x.shape[0] != 1:
            msg = f"{layer}: input must be [1,M], got {list(x.shape)}"
            raise BuildError(msg)
        return self._record("softmax", layer, "lfv_softmax", (x,), x.shape)

    def softmax_channels(self, x: Tensor, *, name: str | None = None) -> Tensor:
        """Softmax over C of [1,C,H,W], independently at every pixel (segmentation masks)."""
        layer = self._layer_name("softmax_channels", name)
        self._nchw(x, layer)
        return self._record("softmax_channels", layer, "lfv_softmax_channels", (x,), x.shape)

    def _factor(self, layer: str, factor: int | tuple[int, int]) -> tuple[int, int]:
        pair = (factor, factor) if isinstance(factor, int) else factor
        if len(pair) != 2 or any(not isinstance(f, int) or f < 1 for f in pair):
            msg = f"{layer}: factor {factor!r} must be a positive integer or a pair of them"
            raise BuildError(msg)
        return pair[0], pair[1]

    def upsample_nearest(
        self, x: Tensor, factor: int | tuple[int, int], *, name: str | None = None
    ) -> Tensor:
        """F.interpolate(mode="nearest", scale_factor=factor); output row y reads row y // f."""
        layer = self._layer_name("upsample_nearest", name)
        c, h, w = self._nchw(x, layer)
        fh, fw = self._factor(layer, factor)
        out = (1, c, h * fh, w * fw)
        return self._record(
            "upsample_nearest", layer, "lfv_upsample_nearest", (x,), out, factor=(fh, fw)
        )

    def upsample_bilinear(
        self, x: Tensor, factor: int | tuple[int, int], *, name: str | None = None
    ) -> Tensor:
        """F.interpolate(mode="bilinear", align_corners=False, scale_factor=factor)."""
        layer = self._layer_name("upsample_bilinear", name)
        c, h, w = self._nchw(x, layer)
        fh, fw = self._factor(layer, factor)
        out = (1, c, h * fh, w * fw)
        return self._record(
            "upsample_bilinear", layer, "lfv_upsample_bilinear", (x,), out, factor=(fh, fw)
        )

    def concat(self, a: Tensor, b: Tensor, *, name: str | None = None) -> Tensor:
        """torch.cat([a, b], dim=1) of two [1,C,H,W] tensors with equal H and W."""
        layer = self._layer_name("concat", name)
        ca, h, w = self._nchw(a, layer)
        cb, hb, wb = self._nchw(b, layer)
        if (h, w) != (hb, wb):
            msg = f"{layer}: spatial sizes {[h, w]} and {[hb, wb]} differ"
            raise BuildError(msg)
        return self._record("concat", layer, "lfv_concat_channels", (a, b), (1, ca + cb, h, w))

    def set_outputs(self, *outputs: Tensor) -> None:
        """Choose the outputs and their order (LFV: mask first, then class probabilities)."""
        if not outputs:
            msg = f"{self.name}: a network needs at least one output"
            raise BuildError(msg)
        for tensor in outputs:
            self._own(tensor, "output")
            if tensor is self._input:
                msg = f"{self.name}: the input cannot be an output"
                raise BuildError(msg)
        if len({t.index for t in outputs}) != len(outputs):
            msg = f"{self.name}: the same tensor is listed twice as an output"
            raise BuildError(msg)
        self._outputs = tuple(outputs)

    # -- export

    def params(self) -> dict[str, NDArray[np.float32]]:
        """Every weight by `.params` name."""
        return {name: array for layer in self._layers for name, array in layer.weights}

    def to_graph(self, func_names: Mapping[str, str] | None = None) -> GraphBuilder:
        """The same network as a `GraphBuilder`, ready for `to_json()` and `params()`.

        `func_names` maps layer names to other node `func_name`s (a GPU build names one host
        function per node, gpu.py); by default every node calls its kernels.c symbol.
        """
        if not self._outputs:
            msg = f"{self.name}: call set_outputs() first"
            raise BuildError(msg)
        builder = GraphBuilder()
        refs: dict[int, TensorRef] = {
            self.input_tensor.index: builder.add_input(self._input_name, self.input_shape)
        }
        for layer in self._layers:
            args = [refs[tensor.index] for tensor in layer.inputs]
            args += [builder.add_weight(name, array) for name, array in layer.weights]
            func_name = func_names[layer.name] if func_names is not None else layer.func_name
            refs[layer.output.index] = builder.add_op(
                func_name, args, layer.output.shape, name=layer.name
            )
        builder.set_outputs([refs[tensor.index] for tensor in self._outputs])
        return builder
