"""The machine a benchmark ran on: cores, CPU model, load average, library versions."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.model.runner import usable_cpus


@dataclass(frozen=True, slots=True)
class Machine:
    """What a reader needs to judge the figures."""

    cpu_model: str
    cores: int
    usable_cores: int
    memory_mb: int
    load_average: tuple[float, float, float]
    python: str
    kernel: str

    def to_dict(self) -> dict[str, object]:
        return {
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "usable_cores": self.usable_cores,
            "memory_mb": self.memory_mb,
            "load_average_1_5_15": [round(v, 2) for v in self.load_average],
            "python": self.python,
            "kernel": self.kernel,
        }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The `model name` of the first CPU (x86), else the hardware line (ARM), else platform's."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware"):
        for line in lines:
            if line.split(":", 1)[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def describe_machine() -> Machine:
    """The machine now (the load average is a snapshot: take one at the start and the end)."""
    return Machine(
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 1,
        usable_cores=usable_cpus(),
        memory_mb=_memory_mb(),
        load_average=load_average(),
        python=sys.version.split()[0],
        kernel=platform.release(),
    )
