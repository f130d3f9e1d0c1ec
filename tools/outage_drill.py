"""Outage drill: requests sent vs answered vs duplicates, per scenario, for `lfv-edge serve`.

    .venv/bin/python tools/outage_drill.py                 # all scenarios, serve's default queue
    .venv/bin/python tools/outage_drill.py --queue-size 512 --reps 3

Runs a real mosquitto and real `lfv-edge serve` processes on 127.0.0.1 (QoS 1, persistent
sessions, on-disk spool); a camera publishes 20 requests/s from its own client through every
outage (tests/reliability/drill.py has the scenarios):

    broker-outage    mosquitto stopped for --down-s mid-stream, then restarted
    service-kill     serve killed with SIGKILL mid-stream, then started again
    kill-while-down  broker down, replies spooled on disk, serve SIGKILLed and restarted while
                     the broker is still down, then the broker comes back

Prints one line per run and exits 1 if any request was left unanswered.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reliability.drill

from tests.reliability.drill import (
    DrillResult,
    broker_outage,
    kill_while_down,
    service_kill,
)

from lfv_edge.model import cpu_runtime
from lfv_edge.modelbuild.compile import compile_kernels
from lfv_edge.modelbuild.package import PackageSpec, build_lfv_package

SCENARIOS = ("broker-outage", "service-kill", "kill-while-down")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=SCENARIOS, action="append")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="camera requests per second")
    parser.add_argument("--down-s", type=float, default=10.0, help="broker outage (seconds)")
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--after-s", type=float, default=3.0)
    parser.add_argument("--queue-size", type=int, default=8, help="serve --queue-size")
    args = parser.parse_args()
    runtime = cpu_runtime.find_cpu_runtime()
    if runtime is None:
        print("no CPU libdlr.so: run scripts/setup", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lfv-outage-drill-") as scratch:
        root = Path(scratch)
        package = root / "package"
        kernels = compile_kernels(cache_dir=root / "kernels")
        build_lfv_package(
            package,
            PackageSpec(image_width=64, image_height=64),
            libdlr=runtime.library,
            kernels=kernels,
        )
        print(
            f"load average {os.getloadavg()[0]:.2f}; rate {args.rate:g}/s, "
            f"broker down {args.down_s:g} s, queue {args.queue_size}",
            flush=True,
        )
        results: list[DrillResult] = []
        for rep in range(args.reps):
            for scenario in args.scenario or SCENARIOS:
                folder = root / f"{scenario}-{rep}"
                common = {"rate_hz": args.rate, "queue_size": args.queue_size}
                if scenario == "broker-outage":
                    result = broker_outage(
                        folder, package, before_s=args.before_s, down_s=args.down_s,
                        after_s=args.after_s, **common,
                    )  # fmt: skip
                elif scenario == "service-kill":
                    result = service_kill(
                        folder, package, before_s=args.before_s, after_s=args.after_s, **common
                    )
                else:
                    result = kill_while_down(
                        folder, package, before_s=args.before_s, down_s=args.down_s,
                        after_s=args.after_s, **common,
                    )  # fmt: skip
                results.append(result)
                print(result.line(), flush=True)
    lost = sum(len(r.missing) for r in results)
    print(f"load average {os.getloadavg()[0]:.2f}; unanswered requests in all runs: {lost}")
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
