"""Run the converter's child process and survive its crashes.

A candidate check feeds a kernel inputs its author never planned for (random values where a
kernel may read indices, say) and a compiled kernel that misbehaves takes its process down:
SIGSEGV, SIGBUS, or a loop that never ends. So every kernel call happens in a child
(worker.py). When a child dies, the last line of its progress file names the kernel it was
calling; the child is started again with that kernel marked "crashed" (never called again,
reported as such, and the conversion refused), until a child finishes. A child that writes
no progress for `stall_s` seconds is killed and treated the same way. A child that exits with
a Python error is not a kernel's fault: that ends the conversion with the error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from lfv_edge.convert import ConvertError
from lfv_edge.convert.report import ConversionReport
from lfv_edge.convert.worker import PROGRESS, REPORT, Job

logger = logging.getLogger(__name__)

STALL_S = 600.0
MAX_RESTARTS = 64


def _last_kernel(progress: Path) -> str | None:
    if not progress.is_file():
        return None
    for line in reversed(progress.read_text().splitlines()):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "kernel" in event:
            return str(event["kernel"])
        if event.get("step") == "verified":
            return None
    return None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_worker(
    job: Job, *, stall_s: float = STALL_S, max_restarts: int = MAX_RESTARTS
) -> ConversionReport:
    """Run children until one finishes; the report says which kernels crashed them.

    Raises:
        ConvertError: a child refused the package (its message), or crashed outside any
            kernel, or crashed more than `max_restarts` times.
    """
    work = Path(job.work_dir)
    restarts = 0
    while True:
        progress = work / PROGRESS
        progress.unlink(missing_ok=True)
        (work / REPORT).unlink(missing_ok=True)
        job_file = work / "job.json"
        job_file.write_text(job.dumps())
        command = [sys.executable, "-m", "lfv_edge.convert.worker", str(job_file)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as child:
            stalled = False
            while True:
                try:
                    child.wait(timeout=2.0)
                    break
                except subprocess.TimeoutExpired:
                    last = progress.stat().st_mtime if progress.exists() else None
                    if last is not None and time.time() - last > stall_s:
                        child.kill()
                        child.wait()
                        stalled = True
                        break
            stdout, stderr = child.communicate()
        code = child.returncode
        if code == 0 and (work / REPORT).is_file():
            report = ConversionReport.from_json(json.loads((work / REPORT).read_text()))
            report.restarts = restarts
            return report
        if code == 3:
            reason = (stderr.strip().splitlines() or ["no reason given"])[-1]
            raise ConvertError(reason)
        if code > 0 and not stalled:  # a Python error in the child, not a kernel's crash
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            msg = f"the converter's child process failed (exit {code}): {tail or 'no message'}"
            raise ConvertError(msg)
        culprit = _last_kernel(progress)
        what = (
            f"no progress for {stall_s:.0f} s"
            if stalled
            else (_signal_name(code) if code < 0 else f"exit {code}")
        )
        if culprit is None:
            tail = " ".join(stderr.strip().splitlines()[-3:])
            msg = f"the converter's child process failed ({what}) outside any kernel call: {tail or stdout.strip()[-300:]}"
            raise ConvertError(msg)
        if culprit in job.skip or restarts >= max_restarts:
            msg = f"the converter's child process keeps failing ({what}) at kernel {culprit}"
            raise ConvertError(msg)
        logger.warning(
            "kernel %s: %s in the child process; restarting without calling it", culprit, what
        )
        job = replace(job, skip=(*job.skip, culprit))
        restarts += 1
