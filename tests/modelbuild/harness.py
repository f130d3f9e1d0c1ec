"""Test helpers: write networks as DLR model folders, run them on the real libdlr.so, compare."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lfv_edge.model.runner import DlrRunner
from lfv_edge.model.tvm_params import encode_params
from lfv_edge.modelbuild.graph import GraphBuilder, Network
from lfv_edge.modelbuild.package import GRAPH_FILE, KERNELS_FILE, PARAMS_FILE, write_dlr_model


class DlrHarness:
    """Writes networks as DLR model folders and runs them through the real libdlr.so."""

    def __init__(self, kernels: Path, libdlr: Path, root: Path) -> None:
        self.kernels = kernels
        self.libdlr = libdlr
        self.root = root
        self._count = itertools.count()

    def write(self, network: Network) -> Path:
        """A fresh model folder for `network` (kernels, graph, params, cpu .meta)."""
        folder = self.root / f"model{next(self._count)}"
        return write_dlr_model(folder, network, kernels=self.kernels)

    def load(self, network: Network) -> DlrRunner:
        """`network` loaded by DLR with this run's libdlr.so."""
        return DlrRunner.load(
            self.write(network), library=self.libdlr, input_shape=network.input_shape
        )

    def run(self, network: Network, data: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """One inference of `network` on `data` through the real runtime."""
        return self.load(network).run(data)

    def load_graph(self, builder: GraphBuilder, input_shape: tuple[int, ...]) -> DlrRunner:
        """A raw graph (no read-back checks: tests use this to write deliberately odd graphs)."""
        folder = self.root / f"graph{next(self._count)}"
        folder.mkdir()
        (folder / GRAPH_FILE).write_text(builder.to_json())
        (folder / PARAMS_FILE).write_bytes(encode_params(builder.params()))
        (folder / KERNELS_FILE).write_bytes(self.kernels.read_bytes())
        return DlrRunner.load(folder, library=self.libdlr, input_shape=input_shape)


def max_abs_diff(
    outputs: Sequence[NDArray[np.float32]], references: Sequence[NDArray[np.float64]]
) -> float:
    """Largest absolute difference over all outputs (counts and shapes must match)."""
    assert len(outputs) == len(references), "runtime and reference disagree on the output count"
    worst = 0.0
    for got, want in zip(outputs, references, strict=True):
        assert got.shape == want.shape, f"output shape {got.shape} != reference {want.shape}"
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    return worst
