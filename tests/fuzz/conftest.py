"""Hypothesis profiles for the fuzz tests, and a count of the cases each property ran.

* default: 150 examples per property, derandomized, so CI runs are repeatable and quick;
* `HYPOTHESIS_PROFILE=fuzz` (scripts/fuzz): 10,000 examples per property, random.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default-run",
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default-run"))

CASES: Counter[str] = Counter()  # properties add 1 per generated case


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CASES:
        terminalreporter.write_sep("-", "fuzz cases run")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{name:<40} {count:>8,}")
        terminalreporter.write_line(f"{'total':<40} {sum(CASES.values()):>8,}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The suite's 120 s per-test backstop is for one test; 10,000 round trips through a
    # service take longer than that on a loaded 2-core machine.
    if settings().max_examples < 10_000:
        return
    for item in items:
        if "tests/fuzz/" in item.nodeid:
            item.add_marker(pytest.mark.timeout(1800))
