"""Graph JSON and params written by GraphBuilder / Network: valid per docs/dlr-runtime.md §4–§5."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lfv_edge.model.tvm_graph import parse_graph
from lfv_edge.model.tvm_params import decode_params, encode_params
from lfv_edge.modelbuild import BuildError, networks
from lfv_edge.modelbuild.graph import GraphBuilder, Network, Tensor


def _segmenter_graph() -> tuple[Network, GraphBuilder]:
    network = networks.bench_network(64, 96, segmentation_head=True)
    return network, network.to_graph()


def test_graph_validates_with_data_input_first() -> None:
    # given
    network, builder = _segmenter_graph()
    # when
    graph = parse_graph(builder.to_json())
    # then
    assert graph.arg_nodes[0] == 0, "the data input is node 0 and the first arg node"
    assert graph.arg_names()[0] == "data", "DLR reads the input shape by arg position"
    assert graph.arg_shape("data") == (1, 3, 64, 96), "input entry shape"
    assert graph.output_shapes() == network.output_shapes, "heads follow set_outputs order"
    assert graph.kernel_names() <= {layer.func_name for layer in network.layers}, "kernels"
    assert set(graph.dtypes) == {"float32"}, "every entry is float32"


def test_every_tvm_op_attr_is_a_string_and_row_ptr_counts_outputs() -> None:
    # given
    _, builder = _segmenter_graph()
    # when
    raw = json.loads(builder.to_json())
    # then
    for node in raw["nodes"]:
        if node["op"] == "tvm_op":
            assert all(isinstance(v, str) for v in node["attrs"].values()), f"{node['name']}"
            assert node["attrs"]["num_outputs"] == "1", "one output per kernel"
    assert raw["node_row_ptr"] == list(range(len(raw["nodes"]) + 1)), "one entry per node"
    assert set(raw) == {"nodes", "arg_nodes", "node_row_ptr", "heads", "attrs"}, "no extra keys"


def test_weights_are_placed_just_before_their_first_use() -> None:
    # given
    _, builder = _segmenter_graph()
    # when
    nodes = json.loads(builder.to_json())["nodes"]
    # then
    for position, node in enumerate(nodes[1:], start=1):
        if node["op"] == "null":
            consumer = next(n for n in nodes[position:] if n["op"] == "tvm_op")
            used = [nodes[i]["name"] for i, _, _ in consumer["inputs"]]
            assert node["name"] in used, f"{node['name']} is used by the next kernel call"


def _live_ranges(raw: dict[str, Any]) -> dict[int, tuple[int, int]]:
    nodes = raw["nodes"]
    heads = {h[0] for h in raw["heads"]}
    last = {i: i for i in range(len(nodes))}
    for consumer, node in enumerate(nodes):
        for source, _, _ in node.get("inputs", []):
            last[source] = max(last[source], consumer)
    return {i: (i, len(nodes) if i in heads else last[i]) for i in range(len(nodes))}


def test_shared_storage_never_overlaps_a_live_tensor() -> None:
    # given
    _, builder = _segmenter_graph()
    # when
    raw = json.loads(builder.to_json())
    storage = raw["attrs"]["storage_id"][1]
    # then
    ranges = _live_ranges(raw)
    for a in range(len(storage)):
        for b in range(a + 1, len(storage)):
            if storage[a] != storage[b]:
                continue
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            assert a1 < b0 or b1 < a0, f"entries {a} and {b} share storage while both alive"
            assert raw["nodes"][a]["op"] == raw["nodes"][b]["op"] == "tvm_op", "only op outputs"
    assert len(set(storage)) < len(storage), "some storage is shared in a deep network"


def test_unshared_storage_gives_unique_ids() -> None:
    # given
    _, builder = _segmenter_graph()
    # when
    storage = json.loads(builder.to_json(share_storage=False))["attrs"]["storage_id"][1]
    # then
    assert sorted(storage) == list(range(len(storage))), "one storage id per entry"


def test_params_round_trip_bit_exactly() -> None:
    # given
    network = networks.reference_classifier(224, 224)
    params = network.to_graph().params()
    # when
    decoded = decode_params(encode_params(params))
    # then
    assert list(decoded) == list(params), "names in graph order"
    for name, array in params.items():
        assert decoded[name].dtype == "float32", f"{name} stored as float32"
        assert decoded[name].shape == array.shape, f"{name} shape"
        assert np.array_equal(decoded[name].to_numpy(), array), f"{name} values bit-exact"


def test_reference_classifier_params_file_matches_the_documented_size() -> None:
    # given: docs/dlr-runtime.md §5 — p_conv_weight [8,3,3,3], p_conv_bias [8], p_fc_weight [2,8],
    # p_fc_bias [2] make a file of exactly 1,300 bytes
    params = networks.reference_classifier().to_graph().params()
    # when
    data = encode_params(params)
    # then
    assert sorted(params) == ["p_conv_bias", "p_conv_weight", "p_fc_bias", "p_fc_weight"], "names"
    assert len(data) == 1300, f"{len(data)} bytes"


def test_network_weights_are_read_only_copies() -> None:
    # given
    weight = np.ones((4, 3, 1, 1))
    net = Network()
    x = net.input((1, 3, 8, 8))
    net.set_outputs(net.conv2d(x, weight, np.zeros(4)))
    # when
    weight[:] = 5
    stored = net.params()["conv0_weight"]
    # then
    assert stored.dtype == np.float32, "weights are stored as float32"
    assert np.all(stored == 1), "the network keeps its own copy"
    assert not stored.flags.writeable, "and nobody can change it afterwards"


def test_builder_rejects_unused_weights_and_foreign_tensors() -> None:
    # given
    builder = GraphBuilder()
    other = GraphBuilder()
    x = builder.add_input("data", (1, 3, 4, 4))
    builder.add_weight("unused", np.zeros(3))
    y = builder.add_op("lfv_relu", [x], (1, 3, 4, 4))
    builder.set_outputs([y])
    # then
    with pytest.raises(BuildError, match="'unused' is never used"):
        builder.to_json()
    with pytest.raises(BuildError, match="does not belong to this graph"):
        other.add_op("lfv_relu", [x], (1, 3, 4, 4))
    with pytest.raises(BuildError, match="duplicate node name"):
        builder.add_input("data", (1, 3, 4, 4))
    with pytest.raises(BuildError, match="must be the result of a kernel call"):
        builder.set_outputs([x])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda n, x: n.conv2d(x, np.zeros((4, 2, 3, 3)), np.zeros(4)), r"must be \[Co,3,K,K\]"),
        (lambda n, x: n.conv2d(x, np.zeros((4, 3, 5, 5)), np.zeros(4)), "K 1 or 3"),
        (lambda n, x: n.conv2d(x, np.zeros((4, 3, 3, 3)), np.zeros(4), stride=3), "stride 3"),
        (lambda n, x: n.conv2d(x, np.zeros((4, 3, 3, 3)), np.zeros(5)), r"must be \[4\]"),
        (lambda n, x: n.depthwise_conv2d(x, np.zeros((4, 1, 3, 3)), np.zeros(4)), r"\[3,1,3,3\]"),
        (lambda n, x: n.dense(x, np.zeros((2, 3)), np.zeros(2)), r"must be \[1,K\]"),
        (lambda n, x: n.softmax(x), r"must be \[1,M\]"),
        (lambda n, x: n.upsample_nearest(x, 0), "positive integer"),
        (lambda n, x: n.add(x, n.maxpool2(x)), "differ"),
        (lambda n, x: n.concat(x, n.maxpool2(x)), "spatial sizes"),
    ],
)
def test_network_rejects_inconsistent_layers(
    build: Callable[[Network, Tensor], Tensor], message: str
) -> None:
    # given
    net = Network("bad")
    x = net.input((1, 3, 8, 10))
    # then
    with pytest.raises(BuildError, match=message):
        build(net, x)


def test_network_needs_outputs_before_export() -> None:
    # given
    net = Network("no_outputs")
    net.relu(net.input((1, 3, 4, 4)))
    # then
    with pytest.raises(BuildError, match="set_outputs"):
        net.to_graph()
