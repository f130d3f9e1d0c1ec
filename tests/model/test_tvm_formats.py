"""The .params codec and the graph JSON checks (docs/dlr-runtime.md §4–§5)."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest

from lfv_edge.model.tvm_graph import GraphFormatError, parse_graph
from lfv_edge.model.tvm_params import ParamsFormatError, decode_params, encode_params


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "p_conv_weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "p_conv_bias": rng.standard_normal(8).astype(np.float32),
        "p_fc_weight": rng.standard_normal((2, 8)).astype(np.float32),
        "p_fc_bias": rng.standard_normal(2).astype(np.float32),
    }


def test_params_round_trip_is_exact_and_matches_the_documented_size() -> None:
    weights = _weights()
    data = encode_params(weights)
    assert len(data) == 1300, (
        "the reference model's file is exactly 1,300 bytes (docs/dlr-runtime.md §5)"
    )
    decoded = decode_params(data)
    assert list(decoded) == list(weights), "names keep their order"
    for name, array in weights.items():
        assert decoded[name].dtype == "float32", f"{name} dtype survives"
        assert decoded[name].shape == array.shape, f"{name} shape survives"
        np.testing.assert_array_equal(decoded[name].to_numpy(), array, err_msg=name)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"", "empty"),
        (lambda d: d[:-5], "truncated"),
        (lambda d: b"\x00" * 8 + d[8:], "not a TVM parameter file"),
        (lambda d: d + b"junk", "unexpected bytes"),
    ],
)
def test_broken_params_files_are_refused_with_a_reason(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = encode_params(_weights())
    with pytest.raises(ParamsFormatError, match=message):
        decode_params(mutate(data))


def test_a_non_cpu_array_is_refused() -> None:
    data = bytearray(encode_params({"w": np.zeros(2, np.float32)}))
    header = 8 + 8 + 8 + 8 + 1 + 8  # magics, count, name length + "w", array count
    offset = header + 16  # array magic + reserved
    struct.pack_into("<i", data, offset, 2)
    with pytest.raises(ParamsFormatError, match="device type 2"):
        decode_params(bytes(data))


def _graph() -> dict[str, object]:
    return {
        "nodes": [
            {"op": "null", "name": "data", "inputs": []},
            {"op": "null", "name": "w", "inputs": []},
            {
                "op": "tvm_op",
                "name": "dense",
                "inputs": [[0, 0, 0], [1, 0, 0]],
                "attrs": {
                    "func_name": "k_dense",
                    "num_inputs": "2",
                    "num_outputs": "1",
                    "flatten_data": "0",
                },
            },
        ],
        "arg_nodes": [0, 1],
        "node_row_ptr": [0, 1, 2, 3],
        "heads": [[2, 0, 0]],
        "attrs": {
            "dltype": ["list_str", ["float32", "float32", "float32"]],
            "storage_id": ["list_int", [0, 1, 2]],
            "shape": ["list_shape", [[1, 3, 4, 4], [2, 48], [1, 2]]],
        },
    }


def test_a_well_formed_graph_parses() -> None:
    graph = parse_graph(json.dumps(_graph()))
    assert graph.arg_names() == ["data", "w"], "argument nodes in runtime order"
    assert graph.kernel_names() == {"k_dense"}, "kernels the .so must export"
    assert graph.output_shapes() == [(1, 2)], "outputs from heads"
    assert graph.arg_shape("w") == (2, 48), "shape by name"


def _broken(path: list[object], value: object) -> str:
    graph = copy.deepcopy(_graph())
    target: object = graph
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return json.dumps(graph)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        (_broken(["metadata"], {}), "unsupported top-level key"),
        (_broken(["nodes", 2, "attrs", "num_outputs"], 1), "must be a JSON string"),
        (_broken(["nodes", 2, "op"], "relu"), "not supported"),
        (_broken(["nodes", 2, "inputs"], [[2, 0, 0]]), "execution order"),
        (_broken(["attrs", "shape"], ["list_shape", [[1]]]), "attrs.shape has 1 entries"),
        (_broken(["node_row_ptr"], [0, 1, 2]), "node_row_ptr has 3 entries"),
        (_broken(["arg_nodes"], [0]), "exactly the null nodes"),
        (_broken(["heads"], []), "no outputs"),
    ],
)
def test_malformed_graphs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(GraphFormatError, match=message):
        parse_graph(text)
