"""The converter's child process: every call into the package's kernels happens here.

    python -m lfv_edge.convert.worker JOB.json

The job names the source, a work folder and the kernels not to call (they crashed an earlier
child). The worker runs the whole model once through its own kernels on seeded random inputs,
verifying each distinct kernel the first time a node calls it (on that node's real inputs),
then, if every kernel is verified, assembles the ONNX model and compares it with the kernels
on a few more inputs. It writes, in the work folder:

    progress.jsonl   one line before each kernel call ({"kernel": key, "step": verify|run}),
                     so the parent knows which kernel was running when a child died
    report.json      the partial ConversionReport (kernels, model, vs_kernels)
    model.onnx       only when every kernel is verified
    e2e.npz          the inputs and the kernels' outputs of the end-to-end runs (for DLR)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from numpy.typing import NDArray

from lfv_edge.convert.abi import KernelLibrary
from lfv_edge.convert.assemble import assemble_model, kernel_key
from lfv_edge.convert.executor import BeforeNode, GraphExecutor
from lfv_edge.convert.names import split_kernel_name
from lfv_edge.convert.plans import KernelSpec, Plan, TensorSpec
from lfv_edge.convert.report import ConversionReport, EndToEnd
from lfv_edge.convert.stage import StageModel, load_stage
from lfv_edge.convert.verify import Difference, KernelCheck, KernelVerifier, difference
from lfv_edge.errors import LfvEdgeError
from lfv_edge.model.onnx_runner import (
    META_GRAPH_SHA256,
    META_MANIFEST,
    META_PARAMS_SHA256,
    OnnxSession,
)
from lfv_edge.model.tvm_graph import GraphNode

Array = NDArray[np.generic]
PROGRESS = "progress.jsonl"
REPORT = "report.json"
MODEL = "model.onnx"
E2E = "e2e.npz"
CONVERTER_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Job:
    """What one child run does."""

    source: str
    work_dir: str
    skip: tuple[str, ...] = ()  # kernel keys that crashed or hung an earlier child
    seed: int = 0
    e2e_runs: int = 3

    def dumps(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "work_dir": self.work_dir,
                "skip": list(self.skip),
                "seed": self.seed,
                "e2e_runs": self.e2e_runs,
            }
        )

    @classmethod
    def loads(cls, text: str) -> Job:
        body = json.loads(text)
        return cls(
            body["source"],
            body["work_dir"],
            tuple(body["skip"]),
            int(body["seed"]),
            int(body["e2e_runs"]),
        )


def node_keys(stage: StageModel) -> dict[int, str]:
    """The kernel key of every kernel node (builtins left out)."""
    graph = stage.graph
    keys: dict[int, str] = {}
    for node_id, node in enumerate(graph.nodes):
        if node.op != "tvm_op" or node.func_name in (None, "__nop", "__copy"):
            continue
        entry = graph.entry_id(node_id)
        ins = [graph.shapes[graph.entry_id(s, i)] for s, i in node.inputs]
        outs = [graph.shapes[entry + k] for k in range(node.num_outputs)]
        keys[node_id] = kernel_key(node.func_name, ins, outs)
    return keys


def kernel_spec(stage: StageModel, node_id: int, node: GraphNode) -> KernelSpec:
    """What the verifier needs to know about the kernel a node calls."""
    graph = stage.graph
    entry = graph.entry_id(node_id)
    inputs = tuple(
        TensorSpec(
            graph.shapes[graph.entry_id(s, i)],
            graph.dtypes[graph.entry_id(s, i)],
            graph.nodes[s].op == "null" and graph.nodes[s].name in stage.params,
        )
        for s, i in node.inputs
    )
    outputs = tuple(
        TensorSpec(graph.shapes[entry + k], graph.dtypes[entry + k])
        for k in range(node.num_outputs)
    )
    symbol = node.func_name or ""
    return KernelSpec(symbol, split_kernel_name(symbol), inputs, outputs, node.flatten_data)


def random_feeds(stage: StageModel, rng: np.random.Generator) -> dict[str, Array]:
    """Standard-normal values for every data input (graph dtype)."""
    return {
        name: rng.standard_normal(stage.input_shape(name)).astype(stage.input_dtype(name))
        for name in stage.input_names
    }


class _Progress:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, **event: object) -> None:
        self._stream.write(json.dumps(event) + "\n")
        self._stream.flush()


def run_job(job: Job) -> ConversionReport:
    """Do the child's work; writes the files listed in the module docstring."""
    start = time.perf_counter()
    work = Path(job.work_dir)
    stage = load_stage(Path(job.source))
    report = ConversionReport(source=job.source, stage=stage.folder.name)
    library = KernelLibrary(stage.kernel_lib, system_lib=stage.system_lib)
    executor = GraphExecutor(stage, library)
    verifier = KernelVerifier(library, seed=job.seed)
    keys = node_keys(stage)
    counts: dict[str, int] = {}
    for key in keys.values():
        counts[key] = counts.get(key, 0) + 1
    checks: dict[str, KernelCheck] = {}
    plans: dict[str, Plan] = {}
    skipped = set(job.skip)
    with (work / PROGRESS).open("a") as stream:
        progress = _Progress(stream)

        def before(node_id: int, node: GraphNode, inputs: Sequence[Array]) -> None:
            key = keys.get(node_id)
            if key is None:
                return
            if key not in checks:
                if key in skipped:
                    checks[key] = KernelCheck(
                        symbol=node.func_name or "", ops=str(split_kernel_name(node.func_name or "")),
                        nodes=counts[key], status="crashed",
                        reason="calling this kernel killed (or hung) the converter's child process",
                    )  # fmt: skip
                else:
                    progress(kernel=key, step="verify")
                    check, plan = verifier.verify(
                        kernel_spec(stage, node_id, node), inputs, counts[key]
                    )
                    checks[key] = check
                    if plan is not None:
                        plans[key] = plan
            if key not in skipped:
                progress(kernel=key, step="run")

        rng = np.random.default_rng(job.seed)
        feeds = random_feeds(stage, rng)
        failures: dict[int, str] = {}
        executor.run(feeds, before=before, skip=lambda n: keys.get(n) in skipped, failures=failures)
        progress(step="verified")

        def running(node_id: int, _node: GraphNode, _inputs: Sequence[Array]) -> None:
            if node_id in keys:
                progress(kernel=keys[node_id], step="end-to-end")

        report.kernels = [checks[key] for key in dict.fromkeys(keys.values())]
        _mark_failures(report, checks, keys, failures)
        bad = report.unverified
        if bad:
            names = ", ".join(check.symbol for check in bad[:8]) + (" …" if len(bad) > 8 else "")
            report.refused = f"{len(bad)} kernel(s) not verified: {names}"
        else:
            model = assemble_model(stage, plans, keys.__getitem__, _metadata(stage, report))
            (work / MODEL).write_bytes(model)
            report.model = str(work / MODEL)
            report.vs_kernels = _compare_with_kernels(
                stage, executor, model, feeds, rng, job.e2e_runs, work / E2E, running
            )
            progress(step="done")
    report.seconds = time.perf_counter() - start
    (work / REPORT).write_text(report.dumps())
    return report


def _mark_failures(
    report: ConversionReport,
    checks: dict[str, KernelCheck],
    keys: dict[int, str],
    failures: dict[int, str],
) -> None:
    """A kernel that returned an error in the whole-model run is not verified."""
    for node_id, message in failures.items():
        failed = checks[keys[node_id]]
        if failed.status != "verified":
            continue
        replacement = dataclasses.replace(
            failed, status="unverified", reason=f"returned an error in the model run: {message}"
        )
        report.kernels = [replacement if c is failed else c for c in report.kernels]


def _metadata(stage: StageModel, report: ConversionReport) -> dict[str, str]:
    meta = {
        META_GRAPH_SHA256: stage.graph_sha256,
        META_PARAMS_SHA256: stage.params_sha256,
        "lfv.convert.version": CONVERTER_VERSION,
        "lfv.convert.kernels": f"{report.verified}/{len(report.kernels)} verified",
        "lfv.source.stage": stage.folder.name,
    }
    if stage.manifest_text is not None:
        meta[META_MANIFEST] = stage.manifest_text
    return meta


def _compare_with_kernels(
    stage: StageModel,
    executor: GraphExecutor,
    model: bytes,
    first: dict[str, Array],
    rng: np.random.Generator,
    runs: int,
    npz: Path,
    before: BeforeNode,
) -> EndToEnd:
    session = OnnxSession(model, threads=None)
    worst: list[list[Difference]] = [[] for _ in stage.output_names]
    saved: dict[str, Array] = {}
    for run in range(runs):
        feeds = first if run == 0 else random_feeds(stage, rng)
        want = executor.run(feeds, before=before)
        got = session.run({name: feeds[name] for name in stage.input_names})
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            worst[k].append(difference(g, w))
            saved[f"out{run}_{k}"] = w
        for name, value in feeds.items():
            saved[f"in{run}_{name}"] = value
    np.savez(npz, **saved)  # type: ignore[arg-type]
    outputs = EndToEnd.per_output(stage.output_names, stage.graph.output_shapes(), worst)
    return EndToEnd("the package's own kernels", runs, outputs)


def main(argv: Sequence[str]) -> int:
    """Child entry point: exit 0 with report.json written, 3 on a conversion error."""
    job = Job.loads(Path(argv[0]).read_text())
    try:
        run_job(job)
    except LfvEdgeError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
