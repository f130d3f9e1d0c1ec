"""Probe a model package in a short-lived child process before loading it into ours.

Pre-flight checks (preflight.py) catch the known ways a package kills DLR, but a corrupt
shared object can still crash the process inside `dlopen` or the first inference (SIGBUS,
SIGSEGV), and no Python code can catch that. For packages from outside, `--probe` loads the
model and runs one inference in a child first; only when the child exits cleanly is the model
loaded in-process. A crash becomes a `ModelPackageError` naming the signal.

Run as a module: `python -m lfv_edge.model.probe PACKAGE DEVICE` (exit 0 = the package works).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from lfv_edge.errors import ModelPackageError

_PROBE_EXIT_REFUSED = 3


def probe_package(source: Path, device: str, *, timeout_s: float = 300.0) -> None:
    """Load `source` and run one inference in a child process; raise if that fails or crashes.

    Raises:
        ModelPackageError: the child was killed by a signal, timed out, or refused the package.
    """
    command = [sys.executable, "-m", "lfv_edge.model.probe", str(source), device]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        msg = f"{source}: the probe did not finish loading the model within {timeout_s:.0f} s"
        raise ModelPackageError(msg) from exc
    if completed.returncode == 0:
        return
    if completed.returncode < 0:
        number = -completed.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        msg = (
            f"{source}: DLR crashed with {name} while loading or running this package in a probe "
            "process (corrupt shared objects?); it was not loaded into the service"
        )
        raise ModelPackageError(msg)
    reason = (completed.stderr.strip().splitlines() or ["no reason given"])[-1]
    msg = f"{source}: the probe refused the package: {reason}"
    raise ModelPackageError(msg)


def _probe_main(argv: list[str]) -> int:
    """Child side: load the model with DLR, run one inference on zeros, exit 0."""
    import numpy as np

    from lfv_edge.errors import LfvEdgeError
    from lfv_edge.model.package import read_model_package
    from lfv_edge.model.runner import DlrRunner

    source, device = Path(argv[0]), argv[1]
    try:
        package = read_model_package(source)
        runner = DlrRunner.load(
            package.stage_dir,
            library=package.library.path,
            input_shape=package.stage.input_shape,
            device=device,
        )
        runner.run(np.zeros(package.stage.input_shape, dtype=np.float32))
    except LfvEdgeError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return _PROBE_EXIT_REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(_probe_main(sys.argv[1:]))
