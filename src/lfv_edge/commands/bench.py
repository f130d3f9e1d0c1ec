"""`lfv-edge bench`: measure P1–P5 (docs/performance.md) and C1–C4 (docs/capture.md); table + JSON.

Starts its own mosquitto and `serve` processes; takes minutes (`--quick`: seconds, a smoke
test whose numbers mean nothing). docs/performance.md has the figures and how to read them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lfv_edge.commands import Subparsers

if TYPE_CHECKING:
    from lfv_edge.bench import BenchOptions

_FIGURES = ("p1", "p2", "p3", "p4", "p5", "c1", "c2", "c3", "c4")
_OPTIONAL = ("gpu",)  # only when named: needs an NVIDIA GPU, nvcc and a CUDA libdlr.so


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `bench` to the `lfv-edge` sub-commands."""
    parser = commands.add_parser(
        "bench",
        help="measure pre-processing, throughput, latency, memory, cold start (P1–P5) and "
        "capture (C1–C4)",
        description="Measure the figures of docs/performance.md side by side with their references, "
        "interleaved, and print a table; the full report goes to --out as JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: seconds, not minutes")
    parser.add_argument(
        "--only",
        metavar="P1,P2,…",
        help=f"comma-separated figures to run (default: all of {','.join(_FIGURES).upper()}; "
        "GPU runs only when named)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results.json"), metavar="FILE", help="JSON report"
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PACKAGE",
        help="package for P4/P5 and C1–C4 (default: the demo package, else a builder "
        "segmentation one)",
    )
    parser.add_argument(
        "--threads", type=int, help="TVM threads for serve and the bare loop (default: serve's)"
    )
    parser.add_argument("--rounds", type=int, help="P2 rounds (default 20)")
    parser.add_argument("--requests", type=int, help="P4 requests after warm-up (default 10000)")
    parser.add_argument("--burst", type=int, help="P4 burst size (default 10000)")
    parser.add_argument("--repetitions", type=int, help="P1 and P5 repetitions (default 30/20)")
    parser.add_argument(
        "--networks",
        metavar="NAMES",
        help="builder networks for P2 (comma-separated; default reference,bench; first is P3's)",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep packages and serve logs")
    parser.add_argument(
        "--web",
        action="store_true",
        help="P2 also with the web view on (--http) and a page watching it, interleaved: "
        "the web view's overhead",
    )
    gpu = parser.add_argument_group("figure GPU (serving a GPU package)")
    gpu.add_argument(
        "--gpu-libdlr",
        type=Path,
        metavar="LIB",
        help="CUDA build of libdlr.so for the GPU packages (default: $LFV_EDGE_GPU_LIBDLR)",
    )
    gpu.add_argument(
        "--gpu-networks", metavar="NAMES", help="builder networks (default: reference)"
    )
    gpu.add_argument("--gpu-size", type=int, help="model input side (default 1000)")
    gpu.add_argument("--window", type=int, help="requests in flight (default 16)")
    gpu.add_argument(
        "--prepare-workers", type=int, help="serve's prepare workers (default: usable CPUs − 1)"
    )
    gpu.add_argument(
        "--serve-args",
        metavar="ARGS",
        help='extra `lfv-edge serve` arguments, one string (e.g. "--prepare-workers 8")',
    )
    parser.set_defaults(handler=run)


def _figures(value: str | None) -> tuple[str, ...]:
    from lfv_edge.errors import ConfigError

    if not value:
        return _FIGURES
    chosen = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = [part for part in chosen if part not in _FIGURES + _OPTIONAL]
    if unknown or not chosen:
        known = ", ".join(_FIGURES + _OPTIONAL).upper()
        msg = f"--only: unknown figure(s) {unknown} (known: {known})"
        raise ConfigError(msg)
    return chosen


def _gpu_options(args: argparse.Namespace, options: BenchOptions) -> BenchOptions:
    import os
    import shlex
    from dataclasses import replace

    from lfv_edge.errors import ConfigError

    library = args.gpu_libdlr or os.environ.get("LFV_EDGE_GPU_LIBDLR")
    changes: dict[str, object] = {"gpu_libdlr": Path(library) if library else None}
    if args.gpu_networks:
        networks = tuple(n.strip() for n in args.gpu_networks.split(",") if n.strip())
        if not networks or any(n not in ("reference", "bench") for n in networks):
            msg = f"--gpu-networks: expected reference and/or bench, got {args.gpu_networks!r}"
            raise ConfigError(msg)
        changes["gpu_networks"] = networks
    for flag, value, name in (
        ("--gpu-size", args.gpu_size, "gpu_size"),
        ("--window", args.window, "gpu_window"),
        ("--prepare-workers", args.prepare_workers, "gpu_prepare_workers"),
    ):
        if value is not None:
            if value < 1:
                msg = f"{flag}: expected a positive number, got {value}"
                raise ConfigError(msg)
            changes[name] = value
    if args.serve_args:
        changes["serve_args"] = tuple(shlex.split(args.serve_args))
    return replace(options, **changes)  # type: ignore[arg-type]  # checked field by field above


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the table, write the JSON report."""
    from dataclasses import replace

    from lfv_edge.bench import BenchOptions, run_bench
    from lfv_edge.bench.report import format_table
    from lfv_edge.bench.suite import write_report
    from lfv_edge.errors import ConfigError
    from lfv_edge.service.wiring import serving_tvm_threads

    threads = serving_tvm_threads(args.threads)
    options = BenchOptions.quick(threads) if args.quick else BenchOptions(threads=threads)
    options = replace(
        options, figures=_figures(args.only), model=args.model, keep=args.keep, p2_web=args.web
    )
    options = _gpu_options(args, options)
    if args.networks:
        networks = tuple(n.strip() for n in args.networks.split(",") if n.strip())
        if not networks or any(n not in ("reference", "bench") for n in networks):
            msg = f"--networks: expected reference and/or bench, got {args.networks!r}"
            raise ConfigError(msg)
        options = replace(options, p2_networks=networks)
    for flag, value, fields in (
        ("--rounds", args.rounds, ("p2_rounds",)),
        ("--requests", args.requests, ("p4_requests",)),
        ("--burst", args.burst, ("p4_burst",)),
        ("--repetitions", args.repetitions, ("p1_repetitions", "p5_repetitions")),
    ):
        if value is None:
            continue
        if value < 1:
            msg = f"{flag}: expected a positive number, got {value}"
            raise ConfigError(msg)
        options = replace(options, **dict.fromkeys(fields, value))

    def progress(text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)

    report = run_bench(options, progress)
    write_report(report, args.out)
    print(format_table(report))
    print(f"report: {args.out}")
    return 0
