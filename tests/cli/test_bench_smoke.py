"""`lfv-edge bench`: the suite runs end to end in `--quick` mode and reports every figure.

A smoke test: it checks the report's shape and the correctness figures (pre-processing
parity, every served request answered), never a timing — those are measured, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfv_edge.bench.report import format_table
from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory


@pytest.mark.broker
def test_quick_bench_reports_every_figure(make_package: PackageFactory, tmp_path: Path) -> None:
    # given a small segmentation package for P4/P5 and a private output file
    package = make_package(
        PackageSpec(image_width=64, image_height=64, segmentation_head=True, network="bench")
    )
    out = tmp_path / "bench.json"
    # when
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "bench", "--quick", "--out", str(out), "--model", str(package)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # then
    assert run.returncode == 0, f"bench failed:\n{run.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert {"machine", "p1", "p2", "p3", "p4", "p5"} <= set(report), f"figures: {sorted(report)}"
    assert report["machine"]["usable_cores"] >= 1, "the machine is described"
    assert report["p1"]["max_abs_diff"] <= 1e-5, "ours equals the float64 reference within 1e-5"
    assert report["p1"]["met"]["parity"] is True, "parity is reported as met"
    served = report["p2"][0]["served"]["jpeg1080"]
    assert served["per_s"]["count"] == 2, "one served rate per quick round"
    assert all(p3["service_added_ms"]["count"] > 0 for p3 in report["p3"]), "P3 has samples"
    burst = report["p4"]["burst"]
    assert burst["verdicts"] + burst["busy"] == burst["requests"], (
        f"every burst request answered by a verdict or Busy: {burst}"
    )
    assert report["p4"]["rss_steady_mb"] > 0, "serve's RSS was read"
    assert report["p5"]["first_reply_s"]["count"] == 1, "one quick cold start"
    capture = report["capture"]
    assert capture["c1_trigger_to_verdict_ms"]["count"] == 8, "every quick trigger answered"
    assert capture["c2_frame_age_ms"]["p50"] >= 0, "frame ages were reported"
    assert capture["c3_free_running"]["errors"] == 0, "free-running verdicts, no errors"
    assert capture["c3_free_running"]["inspections_per_s"] > 0, "free-running inspected"
    assert capture["c4_capture_cpu"][0]["frames_per_s"] > 0, "the capture probe read frames"
    for name in ("P1a", "P2", "P3", "P4", "P5", "C1", "C2", "C3", "C4"):
        assert name in run.stdout, f"the printed table has a {name} row:\n{run.stdout}"


def test_unknown_figures_are_a_usage_error(tmp_path: Path) -> None:
    # when
    run = subprocess.run(
        [sys.executable, "-m", "lfv_edge", "bench", "--only", "p1,p9", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # then
    assert run.returncode == 2, f"a configuration error exits 2: {run.returncode} {run.stderr}"
    assert "p9" in run.stderr, f"the unknown figure is named: {run.stderr}"
    assert not (tmp_path / "x.json").exists(), "nothing ran, nothing written"


def test_the_table_marks_missed_targets() -> None:
    # given a report with one figure met and one missed
    report = {
        "machine": {"cpu_model": "test cpu", "usable_cores": 2, "load_average_1_5_15": [1, 1, 1]},
        "p5": {
            "package": "demo",
            "first_reply_s": {"median": 2.5},
            "baseline_s": {"median": 0.4},
            "met": False,
        },
        "p4": {
            "package": "demo",
            "requests": 10000,
            "rss_steady_mb": 120.0,
            "rss_after_mb": 121.0,
            "growth_mb_per_1000_requests": 0.01,
            "met": True,
            "burst": {},
        },
    }
    # when
    table = format_table(report)
    # then
    p5 = next(line for line in table.splitlines() if line.startswith("P5"))
    p4 = next(line for line in table.splitlines() if line.startswith("P4"))
    assert p5.rstrip().endswith("NO"), f"a missed target is marked: {p5}"
    assert p4.rstrip().endswith("yes"), f"a met target is marked: {p4}"
    assert "test cpu" in table, "the machine line names the CPU"
