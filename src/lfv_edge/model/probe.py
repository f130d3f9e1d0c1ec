"""Probe a model in a short-lived child process before loading it into ours.

Pre-flight checks (preflight.py) catch the known ways a model kills DLR, but a corrupt shared
object can still crash the process inside `dlopen` or the first inference (SIGBUS, SIGSEGV),
and no Python code can catch that. The probe loads the model (an LFV package or a bare DLR
model folder) in a child, sets every input DLR lists to zeros, runs once, and prints each
output's shape, sum and L2 norm as one JSON line. Only when the child exits cleanly does the
caller go on (the Inspector then loads the model in-process; `inspect --probe` reports the
numbers). A child that dies becomes a `ModelPackageError` naming the signal or exit status and
the last line the child wrote to stderr, even when libdlr had fd 2 redirected at the time:
the child keeps that capture in a named file in the probe's work folder (runner.py).

Run as a module: `python -m lfv_edge.model.probe SOURCE DEVICE WORKDIR` (exit 0 = it works).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfv_edge.errors import ModelPackageError

_PROBE_EXIT_REFUSED = 3
_STDERR_PREFIX = "libdlr-stderr-"  # runner.NATIVE_STDERR_PREFIX; not imported: no numpy here


@dataclass(frozen=True, slots=True)
class OutputSummary:
    """One output of the probe run: its shape, the sum and the L2 norm of its values."""

    shape: tuple[int, ...]
    total: float
    l2: float

    def as_dict(self) -> dict[str, object]:
        """`{"Shape": [...], "Sum": x, "L2": y}`, as `inspect --json` prints it."""
        return {"Shape": list(self.shape), "Sum": self.total, "L2": self.l2}


def probe_package(
    source: Path, device: str, *, timeout_s: float = 300.0
) -> tuple[OutputSummary, ...]:
    """Load `source` (package or model folder) and run it once on zeros in a child process.

    Returns:
        One summary per output, in the graph's order.

    Raises:
        ModelPackageError: the child refused the model, died (signal or exit status, with
            its last stderr line), timed out, or gave no result.
    """
    with tempfile.TemporaryDirectory(prefix="lfv-edge-probe-") as work:
        command = [sys.executable, "-m", "lfv_edge.model.probe", str(source), device, work]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            msg = f"{source}: the probe did not finish loading and running the model within {timeout_s:.0f} s"
            raise ModelPackageError(msg) from exc
        left_behind = "".join(
            path.read_text(errors="replace")
            for path in sorted(Path(work).glob(f"{_STDERR_PREFIX}*"))
        )
    code = completed.returncode
    reason = _last_line(completed.stderr + "\n" + left_behind) or "nothing on stderr"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        msg = (
            f"{source}: DLR crashed with {name} in the probe process ({reason}); the model was "
            "not loaded into this process"
        )
        raise ModelPackageError(msg)
    if code == _PROBE_EXIT_REFUSED:
        reason = reason.removeprefix(f"{source}: ")  # the child names the same model
        msg = f"{source}: the probe refused the model: {reason}"
        raise ModelPackageError(msg)
    if code != 0:
        msg = (
            f"{source}: the probe process died with exit status {code} ({reason}); the model "
            "was not loaded into this process"
        )
        raise ModelPackageError(msg)
    return _parse_result(completed.stdout, source)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _parse_result(stdout: str, source: Path) -> tuple[OutputSummary, ...]:
    try:
        result: Any = json.loads(_last_line(stdout))
        return tuple(
            OutputSummary(
                tuple(int(d) for d in item["Shape"]), float(item["Sum"]), float(item["L2"])
            )
            for item in result["Outputs"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"{source}: the probe process exited cleanly but gave no readable result"
        raise ModelPackageError(msg) from exc


def _probe_main(argv: list[str]) -> int:
    """Child side: load the model with DLR, zeros into every input it lists, run once."""
    import numpy as np

    from lfv_edge.errors import LfvEdgeError
    from lfv_edge.model.package import open_model
    from lfv_edge.model.runner import DlrRunner

    source, device, work = Path(argv[0]), argv[1], Path(argv[2])
    try:
        model = open_model(source)
        runner = DlrRunner.load_model(
            model.stage_dir,
            library=model.library.path,
            arguments=model.stage.graph.arg_specs(),
            device=device,
            stderr_dir=work,
        )
        zeros = {spec.name: np.zeros(spec.shape, dtype=spec.dtype) for spec in runner.info.inputs}
        outputs = runner.run_inputs(zeros)
    except LfvEdgeError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return _PROBE_EXIT_REFUSED
    summaries = [
        OutputSummary(
            tuple(int(d) for d in output.shape),
            float(np.sum(output, dtype=np.float64)),
            float(np.sqrt(np.sum(np.square(output, dtype=np.float64)))),
        ).as_dict()
        for output in outputs
    ]
    print(json.dumps({"Outputs": summaries}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_probe_main(sys.argv[1:]))
