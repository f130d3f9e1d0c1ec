"""`lfv-edge demo`: the embedded demo package on a synthetic production line, with pictures.

Generates a fixed, seeded set of product images (four surfaces; normal parts and four defect
kinds), inspects each with the demo package through the same pipeline as `infer`, prints a
table (image, ground truth, verdict, confidence, anomaly labels with area) and writes, per
image, the sample PNG and an overlay PNG (image + coloured mask + verdict + legend), plus one
contact sheet of all overlays.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lfv_edge.commands import Subparsers

DEFAULT_OUT = Path("demo-output")
DEFAULT_LIVE_HTTP = "127.0.0.1:8080"
# High-contrast entries of LFV's default palette for the demo's labels: its first entry,
# green, would vanish on the green circuit boards. (`lfv-edge infer --colors` does the same.)
DEMO_COLORS = {"scratch": "#FF2EDC", "stain": "#14A3B3", "crack": "#F76902", "dent": "#9380FF"}


def register(commands: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `demo` to the sub-commands."""
    demo = commands.add_parser(
        "demo",
        help="inspect generated production-line images with the demo package; write overlay pictures",
    )
    demo.add_argument("--model", help="package zip or folder (default: the embedded demo package)")
    demo.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    demo.add_argument("--count", type=int, default=12, help="number of images (default 12)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the image set (default 2026)")
    demo.add_argument("--size", type=int, default=384, help="image side in pixels (default 384)")
    demo.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    live = demo.add_argument_group("live view")
    live.add_argument(
        "--live",
        action="store_true",
        help="stream the parts through the service into the web view (open the URL it prints); "
        "Ctrl-C stops",
    )
    live.add_argument(
        "--http", default=DEFAULT_LIVE_HTTP, metavar="[HOST:]PORT",
        help=f"where the live page listens (default {DEFAULT_LIVE_HTTP}; as http.listen)",
    )  # fmt: skip
    live.add_argument(
        "--interval", type=float, default=1.0, metavar="S",
        help="seconds between parts (default 1)",
    )  # fmt: skip
    live.add_argument("--loop", action="store_true", help="stream the parts again and again")
    demo.set_defaults(handler=_run)


def _plan(count: int, seed: int) -> list[tuple[str, str | None, int]]:
    """(surface, defect or None, sample seed) of each image.

    Surfaces cycle in fours and kinds (normal + each defect) in fives, so twelve images show
    every surface and every defect kind at least twice, and normal parts on three surfaces.
    """
    from lfv_edge.demo.synthetic_line import DEFECTS, SURFACES

    kinds = (None, *DEFECTS)
    return [
        (SURFACES[i % len(SURFACES)], kinds[i % len(kinds)], seed * 1000 + i) for i in range(count)
    ]


def _run(args: argparse.Namespace) -> int:
    if args.live:
        return _run_live(args)
    from lfv_edge.demo.embedded import embedded_package
    from lfv_edge.demo.synthetic_line import generate_sample
    from lfv_edge.errors import ConfigError
    from lfv_edge.inspection.imaging import encode_png
    from lfv_edge.inspection.overlay import contact_sheet, render_overlay
    from lfv_edge.inspection.pipeline import RawFrame
    from lfv_edge.service.config import ModelConfig
    from lfv_edge.service.wiring import load_inspector

    if not 1 <= args.count <= 500:
        raise ConfigError(f"--count must be between 1 and 500, got {args.count}")
    if not 64 <= args.size <= 4096:
        raise ConfigError(f"--size must be between 64 and 4096, got {args.size}")
    started = time.perf_counter()
    settings = ModelConfig(
        path=Path(args.model) if args.model else embedded_package(),
        device=args.device,
        colors=DEMO_COLORS,
    )
    inspector = load_inspector(settings, serving=False)
    package = inspector.package
    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    print(
        f"model {package.name} ({package.version}), threshold {inspector.postprocessor.threshold:.4f}, device {inspector.device.device}"
    )
    header = f"{'image':<20} {'truth':<9} {'verdict':<8} {'confidence':>10}  anomalies (area)"
    print(header)
    print("-" * len(header))
    tiles = []
    agree = 0
    plan = _plan(args.count, args.seed)
    for index, (surface, defect, seed) in enumerate(plan):
        sample = generate_sample(seed, surface, defect, size=(args.size, args.size))
        name = f"{index + 1:02d}-{surface}-{defect or 'normal'}"
        (out / "samples" / f"{name}.png").write_bytes(encode_png(sample.image_rgb))
        verdict = inspector.inspect(RawFrame(sample.image_rgb, "rgb")).verdict
        agree += int(verdict.is_anomalous == sample.is_anomalous)
        found = ", ".join(
            f"{a.name} {_percent(a.pixel_anomaly.total_percentage_area)}"
            for a in verdict.anomalies[1:]
        ) or ("-" if verdict.mask is not None else "(no mask head)")
        state = "ANOMALY" if verdict.is_anomalous else "normal"
        truth = defect or "normal"
        print(f"{name:<20} {truth:<9} {state:<8} {verdict.confidence:>10.3f}  {found}")
        tile = render_overlay(sample.image_rgb, verdict, f"{name} (truth: {truth})")
        (out / "overlays" / f"{name}.png").write_bytes(encode_png(tile))
        tiles.append(tile)
    sheet = out / "contact-sheet.png"
    sheet.write_bytes(
        encode_png(
            contact_sheet(
                tiles,
                f"lfv-edge demo: {package.name}, {agree}/{len(plan)} verdicts match the ground truth",
            )
        )
    )
    elapsed = time.perf_counter() - started
    print("-" * len(header))
    print(f"{agree}/{len(plan)} verdicts match the ground truth; {elapsed:.1f} s")
    print(
        f"wrote {len(plan)} samples to {out / 'samples'}, overlays to {out / 'overlays'}, and {sheet}"
    )
    sys.stdout.flush()
    return 0


def _percent(fraction: float) -> str:
    return "<0.01%" if 0 < fraction < 0.0001 else f"{fraction:.2%}"


def _run_live(args: argparse.Namespace) -> int:
    """The demo's parts through a real `Service` (in-process transport) into the web view."""
    import threading

    from lfv_edge.demo.embedded import embedded_package
    from lfv_edge.demo.synthetic_line import generate_sample
    from lfv_edge.errors import ConfigError
    from lfv_edge.inspection.pipeline import RawFrame
    from lfv_edge.service.config import ModelConfig, parse_config
    from lfv_edge.service.core import Service
    from lfv_edge.service.messages import Request
    from lfv_edge.service.ports import IncomingMessage
    from lfv_edge.service.process import on_stop_signals
    from lfv_edge.service.wiring import load_inspector
    from lfv_edge.transports.memory import MemoryTransport
    from lfv_edge.web.view import WebView

    if not 1 <= args.count <= 500:
        raise ConfigError(f"--count must be between 1 and 500, got {args.count}")
    if not 0 <= args.interval <= 3600:
        raise ConfigError(f"--interval must be between 0 and 3600 s, got {args.interval:g}")
    http = parse_config({"http": {"listen": args.http}}).http
    assert http is not None  # noqa: S101 - given above
    inspector = load_inspector(
        ModelConfig(
            path=Path(args.model) if args.model else embedded_package(),
            device=args.device,
            colors=DEMO_COLORS,
        )
    )
    transport = MemoryTransport(results_topic="demo/results", stats_topic=None)
    service = Service(inspector, [transport], queue_size=16, stats_interval_s=0)
    view = WebView.for_service(http, service)
    stop = threading.Event()
    with on_stop_signals(lambda _name: stop.set()):
        service.start()
        try:
            view.start()
            package = inspector.package
            print(f"lfv-edge demo: live view of {package.name} ({package.version}) on {view.url}")
            print("  parts stream through the service into the page; Ctrl-C stops", flush=True)
            route = transport.results_route()
            plan = _plan(args.count, args.seed)
            rounds = 0
            while not stop.is_set():
                for index, (surface, defect, seed) in enumerate(plan):
                    sample = generate_sample(seed, surface, defect, size=(args.size, args.size))
                    name = f"{index + 1:02d}-{surface}-{defect or 'normal'}"
                    request = Request(
                        request_id=name if rounds == 0 else f"{name}.{rounds}",
                        source=RawFrame(sample.image_rgb, "rgb"),
                        metadata={"Truth": defect or "normal", "Surface": surface},
                    )
                    service.submit(IncomingMessage(b"", route, request=request, source="demo line"))
                    if stop.wait(args.interval):
                        break
                rounds += 1
                if not args.loop:
                    break
            if not stop.is_set():
                print(f"lfv-edge demo: streamed {len(plan)} parts; the page stays up until Ctrl-C",
                      flush=True)  # fmt: skip
            stop.wait()
        finally:
            view.stop(5.0)
            service.stop(10.0)
    return 0
