"""TVM graph-executor JSON (the graph file of a DLR/TVM model folder): parse and check.

libdlr 1.6.0 reads this format with very few checks; several mistakes crash it or run
silently wrong (docs/dlr-runtime.md §4, §7). `parse_graph` enforces what the runtime assumes:

    {"nodes": [{"op": "null"|"tvm_op", "name", "inputs": [[node, index, version?]…],
                "attrs": {"func_name", "num_inputs", "num_outputs", "flatten_data"} (strings)}…],
     "arg_nodes": [ids of "null" nodes; position i is runtime input i],
     "node_row_ptr": [running total of outputs, len(nodes)+1],
     "heads": [[node, index, version]…],
     "attrs": {"dltype": ["list_str", […]], "storage_id": ["list_int", […]],
               "shape": ["list_shape", […]], "device_index"?: ["list_int", […]]}}

Pure: no dlr, no cv2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TOP_KEYS = frozenset({"nodes", "arg_nodes", "node_row_ptr", "heads", "attrs"})
_NODE_KEYS = frozenset({"op", "name", "inputs", "attrs", "attr", "control_deps", "subgraphs"})
_OP_ATTRS = ("func_name", "num_inputs", "num_outputs", "flatten_data")
BUILTIN_FUNCS = frozenset({"__nop", "__copy"})


class GraphFormatError(ValueError):
    """The graph JSON would be rejected, crash, or be misread by the TVM graph executor."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor of the graph: a graph argument (input or weight) or an output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        """`name dtype[d0, d1, …]`."""
        return f"{self.name} {self.dtype}{list(self.shape)}".lstrip()


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node: a graph input/weight (`op == "null"`) or a kernel call (`op == "tvm_op"`)."""

    op: str
    name: str
    inputs: tuple[tuple[int, int], ...]
    func_name: str | None
    num_outputs: int
    flatten_data: bool = False  # the executor passes every argument as 1-D


@dataclass(frozen=True, slots=True)
class Graph:
    """A parsed, checked graph: nodes, argument nodes, outputs, per-entry shapes and dtypes."""

    nodes: tuple[GraphNode, ...]
    arg_nodes: tuple[int, ...]
    node_row_ptr: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def entry_id(self, node_id: int, index: int = 0) -> int:
        """Index into `shapes`/`dtypes` of output `index` of node `node_id`."""
        return self.node_row_ptr[node_id] + index

    def arg_names(self) -> list[str]:
        """Names of the argument nodes in runtime input order (data input(s) and weights)."""
        return [self.nodes[node_id].name for node_id in self.arg_nodes]

    def arg_shape(self, name: str) -> tuple[int, ...]:
        """Shape of the argument node called `name`."""
        for node_id in self.arg_nodes:
            if self.nodes[node_id].name == name:
                return self.shapes[self.entry_id(node_id)]
        msg = f"no argument node named {name!r}"
        raise KeyError(msg)

    def arg_dtype(self, name: str) -> str:
        """Dtype of the argument node called `name`."""
        for node_id in self.arg_nodes:
            if self.nodes[node_id].name == name:
                return self.dtypes[self.entry_id(node_id)]
        msg = f"no argument node named {name!r}"
        raise KeyError(msg)

    def arg_specs(self) -> tuple[TensorSpec, ...]:
        """Every argument node (data inputs and weights) in runtime input order."""
        return tuple(
            TensorSpec(
                self.nodes[node_id].name,
                self.shapes[self.entry_id(node_id)],
                self.dtypes[self.entry_id(node_id)],
            )
            for node_id in self.arg_nodes
        )

    def kernel_calls(self) -> int:
        """How many nodes call a kernel (builtins `__nop`/`__copy` excluded)."""
        return sum(
            1
            for node in self.nodes
            if node.func_name is not None and node.func_name not in BUILTIN_FUNCS
        )

    def kernel_names(self) -> set[str]:
        """Every kernel symbol the graph calls (builtins `__nop`/`__copy` excluded)."""
        return {
            node.func_name
            for node in self.nodes
            if node.func_name is not None and node.func_name not in BUILTIN_FUNCS
        }

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the graph outputs, in `heads` order."""
        return [self.shapes[self.entry_id(node, index)] for node, index in self.heads]

    def output_dtypes(self) -> list[str]:
        """Dtypes of the graph outputs, in `heads` order."""
        return [self.dtypes[self.entry_id(node, index)] for node, index in self.heads]


def parse_graph(text: str | bytes) -> Graph:
    """Parse and check a graph JSON document.

    Raises:
        GraphFormatError: names the first problem found (key, node id, entry).
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"not valid JSON: {exc}"
        raise GraphFormatError(msg) from exc
    except RecursionError as exc:  # json.loads gives up on deep nesting with RecursionError
        msg = "not valid JSON: nested too deeply"
        raise GraphFormatError(msg) from exc
    if not isinstance(raw, dict):
        msg = "top level must be a JSON object"
        raise GraphFormatError(msg)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        msg = (
            f"unsupported top-level key(s) {unknown} (the runtime accepts only {sorted(_TOP_KEYS)})"
        )
        raise GraphFormatError(msg)
    missing = sorted(_TOP_KEYS - set(raw))
    if missing:
        msg = f"missing top-level key(s) {missing}"
        raise GraphFormatError(msg)
    nodes = _parse_nodes(raw["nodes"])
    row_ptr = _int_list(raw["node_row_ptr"], "node_row_ptr")
    if len(row_ptr) != len(nodes) + 1:
        msg = f"node_row_ptr has {len(row_ptr)} entries, expected len(nodes)+1 = {len(nodes) + 1}"
        raise GraphFormatError(msg)
    for node_id, node in enumerate(nodes):
        if row_ptr[node_id + 1] - row_ptr[node_id] != node.num_outputs:
            msg = f"node_row_ptr disagrees with node {node_id} ({node.name}): {node.num_outputs} outputs"
            raise GraphFormatError(msg)
    num_entries = row_ptr[-1]
    shapes, dtypes = _parse_attrs(raw["attrs"], num_entries)
    arg_nodes = tuple(_int_list(raw["arg_nodes"], "arg_nodes"))
    for node_id in arg_nodes:
        if not 0 <= node_id < len(nodes) or nodes[node_id].op != "null":
            msg = f"arg_nodes names node {node_id}, which is not a null (input/weight) node"
            raise GraphFormatError(msg)
    nulls = {node_id for node_id, node in enumerate(nodes) if node.op == "null"}
    if set(arg_nodes) != nulls:
        msg = f"arg_nodes {sorted(arg_nodes)} must list exactly the null nodes {sorted(nulls)}"
        raise GraphFormatError(msg)
    for node_id, node in enumerate(nodes):
        for source, index in node.inputs:
            if not 0 <= source < node_id:
                msg = f"node {node_id} ({node.name}) reads node {source}: nodes must be in execution order"
                raise GraphFormatError(msg)
            if index >= nodes[source].num_outputs:
                msg = f"node {node_id} ({node.name}) reads output {index} of node {source}, which has {nodes[source].num_outputs}"
                raise GraphFormatError(msg)
    heads = _parse_refs(raw["heads"], "heads", len(nodes))
    if not heads:
        msg = "heads is empty: the graph has no outputs"
        raise GraphFormatError(msg)
    return Graph(
        nodes=nodes,
        arg_nodes=arg_nodes,
        node_row_ptr=tuple(row_ptr),
        heads=heads,
        shapes=shapes,
        dtypes=dtypes,
    )


def _int_list(value: object, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        msg = f"{where} must be a list of integers"
        raise GraphFormatError(msg)
    return list(value)


def _parse_refs(value: object, where: str, num_nodes: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        msg = f"{where} must be a list of [node, index, version] triples"
        raise GraphFormatError(msg)
    refs: list[tuple[int, int]] = []
    for position, item in enumerate(value):
        ints = _int_list(item, f"{where}[{position}]")
        if len(ints) not in {2, 3} or not 0 <= ints[0] < num_nodes or ints[1] < 0:
            msg = f"{where}[{position}] = {item} is not a valid [node, index, version] reference"
            raise GraphFormatError(msg)
        refs.append((ints[0], ints[1]))
    return tuple(refs)


def _parse_nodes(value: object) -> tuple[GraphNode, ...]:
    if not isinstance(value, list) or not value:
        msg = "nodes must be a non-empty list"
        raise GraphFormatError(msg)
    nodes: list[GraphNode] = []
    for node_id, item in enumerate(value):
        where = f"nodes[{node_id}]"
        if not isinstance(item, dict):
            msg = f"{where} must be an object"
            raise GraphFormatError(msg)
        unknown = sorted(set(item) - _NODE_KEYS)
        if unknown:
            msg = f"{where}: unsupported key(s) {unknown}"
            raise GraphFormatError(msg)
        op, name = item.get("op"), item.get("name")
        if not isinstance(name, str):
            msg = f"{where}: name must be a string"
            raise GraphFormatError(msg)
        inputs = _parse_refs(item.get("inputs", []), f"{where}.inputs", len(value))
        if op == "null":
            nodes.append(GraphNode("null", name, inputs, None, 1))
            continue
        if op != "tvm_op":
            msg = f"{where} ({name}): op {op!r} is not supported (only 'null' and 'tvm_op')"
            raise GraphFormatError(msg)
        attrs = item.get("attrs", item.get("attr"))
        if not isinstance(attrs, dict):
            msg = f"{where} ({name}): tvm_op needs attrs"
            raise GraphFormatError(msg)
        for key in _OP_ATTRS:
            if key not in attrs:
                msg = f"{where} ({name}): attrs.{key} is missing"
                raise GraphFormatError(msg)
        for key, attr_value in attrs.items():
            if not isinstance(attr_value, str):
                msg = f"{where} ({name}): attrs.{key} must be a JSON string, got {attr_value!r}"
                raise GraphFormatError(msg)
        try:
            num_outputs = int(attrs["num_outputs"])
        except ValueError as exc:
            msg = f"{where} ({name}): attrs.num_outputs {attrs['num_outputs']!r} is not an integer"
            raise GraphFormatError(msg) from exc
        if num_outputs < 1:
            msg = f"{where} ({name}): attrs.num_outputs must be at least 1"
            raise GraphFormatError(msg)
        flatten = attrs["flatten_data"] not in ("0", "")
        nodes.append(GraphNode("tvm_op", name, inputs, attrs["func_name"], num_outputs, flatten))
    return tuple(nodes)


def _typed(attrs: Mapping[str, object], key: str, tag: str) -> Sequence[object]:
    value = attrs.get(key)
    if (
        not isinstance(value, list)
        or len(value) != 2  # [type tag, values]
        or value[0] != tag
        or not isinstance(value[1], list)
    ):
        msg = f'attrs.{key} must be ["{tag}", [...]]'
        raise GraphFormatError(msg)
    items: list[object] = value[1]
    return items


def _parse_attrs(
    raw: object, num_entries: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
    if not isinstance(raw, dict):
        msg = "attrs must be an object"
        raise GraphFormatError(msg)
    dltype = _typed(raw, "dltype", "list_str")
    storage = _typed(raw, "storage_id", "list_int")
    shape = _typed(raw, "shape", "list_shape")
    for key, items in (("dltype", dltype), ("storage_id", storage), ("shape", shape)):
        if len(items) != num_entries:
            # The runtime does not check this and reads out of bounds (docs/dlr-runtime.md §4).
            msg = f"attrs.{key} has {len(items)} entries, the graph has {num_entries}"
            raise GraphFormatError(msg)
    if "device_index" in raw:
        device_index = _typed(raw, "device_index", "list_int")
        if len(device_index) != num_entries:
            msg = f"attrs.device_index has {len(device_index)} entries, the graph has {num_entries}"
            raise GraphFormatError(msg)
    for key, value in raw.items():
        if key in {"dltype", "storage_id", "shape", "device_index"}:
            continue
        if not (isinstance(value, list) and value and value[0] in {"list_int", "size_t"}):
            msg = f"attrs.{key} is not supported by the graph executor"
            raise GraphFormatError(msg)
    for position, sid in enumerate(storage):
        if not isinstance(sid, int) or sid < 0:
            msg = f"attrs.storage_id[{position}] = {sid!r} must be a non-negative integer"
            raise GraphFormatError(msg)
    shapes: list[tuple[int, ...]] = []
    for position, dims in enumerate(shape):
        if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
            msg = f"attrs.shape[{position}] = {dims!r} must be a list of non-negative integers"
            raise GraphFormatError(msg)
        shapes.append(tuple(dims))
    dtypes: list[str] = []
    for position, name in enumerate(dltype):
        if not isinstance(name, str):
            msg = f"attrs.dltype[{position}] must be a string"
            raise GraphFormatError(msg)
        dtypes.append(name)
    return tuple(shapes), tuple(dtypes)
