"""Verified plans → one ONNX model with the package's input and output names and shapes.

Every graph node becomes its kernel's plan, applied to plain (logical) tensors. Each tensor
remembers the layout its producer left it in; a consumer that expects another layout gets a
conversion (pack into the producer's raw form, unpack into its own), and a conversion between
equal layouts is nothing, so the NCHWc ↔ NCHW shuffles TVM inserted disappear. Weights are
constants: their unpacking folds into the stored tensor. Outputs are packed back into the
package's raw shapes (a 5-D NCHWc output stays 5-D), so a caller sees exactly what DLR gives.

The model's metadata records where it came from (graph and params digests, which
`OnnxRunner.load` checks) and carries the package's manifest.json, so LFV pre- and
post-processing apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lfv_edge.convert import ConvertError
from lfv_edge.convert.layouts import Layout, Plain, convert_layout
from lfv_edge.convert.onnx_graph import OnnxGraph, Value
from lfv_edge.convert.plans import Plan
from lfv_edge.convert.stage import StageModel

KernelKey = str


def assemble_model(
    stage: StageModel,
    plans: Mapping[KernelKey, Plan],
    key_of: Callable[[int], KernelKey],
    metadata: Mapping[str, str],
) -> bytes:
    """The whole model as serialised ONNX.

    Raises:
        ConvertError: a node's kernel has no plan (the caller refuses before this).
    """
    graph = stage.graph
    g = OnnxGraph("lfv_edge_" + (stage.manifest.stage.type if stage.manifest else "model"))
    held: dict[int, tuple[Value, Layout]] = {}
    converted: dict[tuple[int, Layout], Value] = {}

    def fetch(entry: int, layout: Layout) -> Value:
        value, current = held[entry]
        if current == layout:
            return value
        cached = converted.get((entry, layout))
        if cached is None:
            cached = convert_layout(g, value, current, layout, graph.shapes[entry])
            converted[(entry, layout)] = cached
        return cached

    for node_id, node in enumerate(graph.nodes):
        entry = graph.entry_id(node_id)
        if node.op == "null":
            dtype = graph.dtypes[entry]
            if node.name in stage.input_names:
                if stage.inputs_have_defaults:
                    value = g.input_with_default(node.name, stage.params[node.name].to_numpy())
                else:
                    value = g.input(node.name, graph.shapes[entry], dtype)
            else:
                value = OnnxGraph.const(stage.params[node.name].to_numpy(), dtype=dtype)
            held[entry] = (value, Plain())
            continue
        sources = [graph.entry_id(source, index) for source, index in node.inputs]
        if node.func_name in ("__nop", "__copy"):
            plain = fetch(sources[0], Plain())
            held[entry] = (g.reshape(plain, graph.shapes[entry]), Plain())
            continue
        key = key_of(node_id)
        plan = plans.get(key)
        if plan is None:
            msg = f"node {node_id} ({node.name}): kernel {key} has no verified plan"
            raise ConvertError(msg)
        inputs = [
            fetch(source, layout) for source, layout in zip(sources, plan.in_layouts, strict=True)
        ]
        outputs = plan.emit(g, inputs)
        for k, (value, layout) in enumerate(zip(outputs, plan.out_layouts, strict=True)):
            held[entry + k] = (value, layout)
    for (head, index), name in zip(graph.heads, stage.output_names, strict=True):
        entry = graph.entry_id(head, index)
        raw = graph.shapes[entry]
        value = fetch(entry, Plain())
        g.output(g.reshape(value, raw), name, graph.dtypes[entry])
    return g.to_model(metadata, doc=f"Converted by lfv-edge from {stage.folder.name}")


def kernel_key(
    symbol: str, input_shapes: list[tuple[int, ...]], output_shapes: list[tuple[int, ...]]
) -> KernelKey:
    """The identity of a distinct kernel: its symbol and argument shapes.

    TVM kernels have one shape signature per symbol; a hand-written library (the builder's)
    may call one symbol at several shapes, and each is checked on its own.
    """
    shapes = ";".join("x".join(str(d) for d in s) for s in (*input_shapes, *output_shapes))
    return f"{symbol}({shapes})"
