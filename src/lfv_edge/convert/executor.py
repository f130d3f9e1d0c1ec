"""A small graph executor over a package's own kernels (what DLR does, minus DLR).

It runs the graph JSON exactly as TVM's graph executor does — nodes in order, weights from
`.params`, every kernel called on its input entries then its output entries, 1-D views for
`flatten_data` nodes — but on private aligned buffers and through abi.py, so that:

* the converter sees each kernel's real inputs (the first check of every candidate plan);
* a model DLR cannot load (`--system-lib`) still has a reference to compare the converted
  model with;
* an entry is freed once its last reader has run, so a large model does not keep every
  activation alive.

Runs kernels in-process: use it in the converter's child process only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from lfv_edge.convert import ConvertError
from lfv_edge.convert.abi import KernelCallError, KernelLibrary, aligned_copy, aligned_empty
from lfv_edge.convert.stage import StageModel
from lfv_edge.model.tvm_graph import GraphNode

Array = NDArray[np.generic]
# Called before node `node_id` runs, with its input arrays; may not modify them.
BeforeNode = Callable[[int, GraphNode, Sequence[Array]], None]


class GraphExecutor:
    """Runs a `StageModel` with its kernel library; one run at a time."""

    def __init__(self, stage: StageModel, library: KernelLibrary) -> None:
        self.stage = stage
        self.library = library
        graph = stage.graph
        self._params = {
            name: aligned_copy(array.to_numpy()) for name, array in stage.params.items()
        }
        last_use: dict[int, int] = {}
        for node_id, node in enumerate(graph.nodes):
            for source, index in node.inputs:
                last_use[graph.entry_id(source, index)] = node_id
        for head, index in graph.heads:
            last_use[graph.entry_id(head, index)] = len(graph.nodes)
        self._last_use = last_use

    def entry_shape(self, entry: int) -> tuple[int, ...]:
        """Declared shape of an entry."""
        return self.stage.graph.shapes[entry]

    def run(
        self,
        feeds: Mapping[str, Array],
        *,
        before: BeforeNode | None = None,
        skip: Callable[[int], bool] | None = None,
        failures: dict[int, str] | None = None,
    ) -> list[Array]:
        """Outputs in `heads` order.

        Nodes for which `skip(node_id)` is true are not called (their outputs are zeros). With
        `failures`, a kernel that returns an error leaves zeros too and its message is
        recorded under its node id; without, the error propagates.

        Raises:
            ConvertError: a missing feed; `KernelCallError` when a kernel fails.
        """
        graph = self.stage.graph
        entries: dict[int, Array] = {}
        for node_id, node in enumerate(graph.nodes):
            entry = graph.entry_id(node_id)
            if node.op == "null":
                if node.name in feeds:
                    expected = graph.shapes[entry]
                    value = np.asarray(feeds[node.name], dtype=graph.dtypes[entry])
                    if value.shape != expected:
                        msg = f"input {node.name!r} has shape {list(value.shape)}, the graph says {list(expected)}"
                        raise ConvertError(msg)
                    entries[entry] = aligned_copy(value)
                elif node.name in self._params:
                    entries[entry] = self._params[node.name]
                else:
                    msg = f"no value for graph input {node.name!r}"
                    raise ConvertError(msg)
                continue
            inputs = [entries[graph.entry_id(source, index)] for source, index in node.inputs]
            outputs = [
                aligned_empty(graph.shapes[entry + k], graph.dtypes[entry + k])
                for k in range(node.num_outputs)
            ]
            if before is not None:
                before(node_id, node, inputs)
            if skip is not None and skip(node_id):
                for out in outputs:
                    out[...] = 0
            elif node.func_name is None or node.func_name in ("__nop", "__copy"):
                # __nop's output shares its input's storage in TVM: the same values.
                outputs[0][...] = inputs[0].reshape(outputs[0].shape)
            else:
                try:
                    self.library.call(
                        node.func_name, [*inputs, *outputs], flatten=node.flatten_data
                    )
                except KernelCallError as exc:
                    if failures is None:
                        raise
                    failures[node_id] = str(exc)
                    for out in outputs:
                        out[...] = 0
            for k, out in enumerate(outputs):
                entries[entry + k] = out
            for source, index in node.inputs:
                source_entry = graph.entry_id(source, index)
                if self._last_use.get(source_entry) == node_id:
                    entries.pop(source_entry, None)
        return [np.array(entries[graph.entry_id(head, index)]) for head, index in graph.heads]
