"""`GatedRunner`: the real runner behind a gate, the seam tests use to hold the model thread.

Each run announces itself (`entered`), waits for `gate`, and can be told to fail once
(`fail_with`), so a test fills queues and provokes failures deterministically, without sleeps.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

from lfv_edge.model.runner import Runner

GATE_TIMEOUT_S = 60.0


class GatedRunner:
    """A real runner behind a gate (a seam at the Runner port)."""

    def __init__(self, inner: Runner, *, open_gate: bool = False) -> None:
        self.inner = inner
        self.entered = threading.Semaphore(0)  # released once per run that reached the gate
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.fail_with: BaseException | None = None  # raised instead of running, once

    def run(self, tensor: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        self.entered.release()
        if not self.gate.wait(GATE_TIMEOUT_S):
            msg = "the test never opened the gate"
            raise TimeoutError(msg)
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return self.inner.run(tensor)
