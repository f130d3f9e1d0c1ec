"""The printed summary of a benchmark report: one row per figure, measured against its target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _met(flag: object) -> str:
    if flag is None:
        return "—"
    return "yes" if flag else "NO"


def rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, met) for every figure present in `report`."""
    out: list[tuple[str, str, str, str]] = []
    p1 = report.get("p1")
    if p1:
        times = p1["times_ms"]
        out += [
            (
                "P1a pre-process, after decode",
                f"{p1['after_decode_speedup']['median']:.2f}× "
                f"({times['reference_after_decode']['median']:.1f} → "
                f"{times['ours_after_decode']['median']:.1f} ms)",
                "≥ 4×",
                _met(p1["met"]["after_decode"]),
            ),
            (
                "P1b pre-process, from JPEG bytes",
                f"{p1['from_bytes_speedup']['median']:.2f}× "
                f"({times['reference_from_bytes']['median']:.1f} → "
                f"{times['ours_from_bytes']['median']:.1f} ms)",
                "≥ 2.5×",
                _met(p1["met"]["from_bytes"]),
            ),
            (
                "P1 ours / floor (resize + write)",
                f"{p1['ours_vs_floor']['median']:.2f}× "
                f"(floor {times['floor_resize_plus_write']['median']:.1f} ms)",
                "≤ 1.3×",
                _met(p1["met"]["vs_floor"]),
            ),
            ("P1 parity, max |ours − ref|", f"{p1['max_abs_diff']:.2g}", "≤ 1e-5",
             _met(p1["met"]["parity"])),
        ]  # fmt: skip
    for p2 in report.get("p2", []):
        for kind, served in p2["served"].items():
            out.append(
                (
                    f"P2 {p2['package']} ({p2['model_run_ms_at_start']:.0f} ms), {kind}",
                    f"{served['ratio_to_bare']['median']:.3f} "
                    f"({served['per_s']['median']:.1f}/s vs {p2['bare_per_s']['median']:.1f}/s)",
                    "≥ 0.95",
                    _met(served["met"]),
                )
            )
        web = p2.get("web")
        if web:
            out.append(
                (
                    f"P2 {p2['package']}, {web['kind']}, web view on + page",
                    f"{web['ratio_to_served_without_web']['median']:.3f} of served without "
                    f"({web['per_s']['median']:.1f}/s; {web['ratio_to_bare']['median']:.3f} of bare)",
                    "(issue 15)",
                    "—",
                )
            )
    for p3 in report.get("p3", []):
        added = p3.get("service_added_ms") or {}
        out.append(
            (
                f"P3 added latency, {p3['kind']} @ {p3['rate_per_s']:.1f}/s",
                f"p50 {added.get('p50', float('nan')):.1f} / p99 "
                f"{added.get('p99', float('nan')):.1f} ms",
                "p99 ≤ 10 ms",
                _met(p3["met"]),
            )
        )
    for g in report.get("gpu", []):
        run = g["model_run_ms"]
        out.append(
            (
                f"G model time {g['package']}",
                f"GPU {run['gpu']:.2f} ms, CPU {run['cpu']:.1f} ms "
                f"({run['cpu_tvm_threads']} threads): {run['cpu_over_gpu']:.0f}×",
                "—",
                "—",
            )
        )
        for kind, served in g["served"].items():
            prep = g["preparation"][kind]
            out.append(
                (
                    f"G served / min(bare GPU, preparation), {kind}",
                    f"{served['ratio_to_capacity']['median']:.3f} "
                    f"({served['per_s']['median']:.1f}/s; in-process "
                    f"{served['in_process']['ratio_to_capacity']['median']:.3f}; "
                    f"bare {g['bare_gpu_per_s']['median']:.0f}/s, preparation "
                    f"{prep['parallel_per_s']['median']:.0f}/s on {prep['threads']} threads, "
                    f"{prep['per_core_per_s']:.0f}/s per core)",
                    "≥ 0.9",
                    _met(served["met"]),
                )
            )
    p4 = report.get("p4")
    if p4:
        out.append(
            (
                f"P4 RSS serve ({p4['package']})",
                f"steady {p4['rss_steady_mb']:.0f} MB, after {p4['requests']} "
                f"{p4['rss_after_mb']:.0f} MB ({p4['growth_mb_per_1000_requests']:+.2f} MB/1000)",
                "≤ 300 MB, no growth",
                _met(p4["met"]),
            )
        )
        burst = p4.get("burst") or {}
        if burst:
            out.append(
                (
                    f"P4 peak RSS, {burst['requests']}-request burst",
                    f"{burst['peak_rss_mb']:.0f} MB ({burst['busy']} Busy)",
                    "(issue 6)",
                    "—",
                )
            )
    p5 = report.get("p5")
    if p5:
        out.append(
            (
                f"P5 cold start → first reply ({p5['package']})",
                f"{p5['first_reply_s']['median']:.2f} s (imports alone "
                f"{p5['baseline_s']['median']:.2f} s)",
                "≤ 2 s",
                _met(p5["met"]),
            )
        )
    out += _capture_rows(report.get("capture"))
    return out


def _capture_rows(capture: Mapping[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if not capture:
        return []
    out: list[tuple[str, str, str, str]] = []
    latency = capture.get("c1_trigger_to_verdict_ms") or {}
    if latency:
        out.append(("C1 trigger → verdict (1080p camera, MQTT)",
                    f"p50 {latency['p50']:.1f} / p99 {latency['p99']:.1f} ms", "—", "—"))  # fmt: skip
    age = capture.get("c2_frame_age_ms") or {}
    if age:
        out.append(("C2 frame age at hand-over",
                    f"p50 {age['p50']:.1f} / p99 {age['p99']:.1f} / max {age['max']:.1f} ms",
                    f"≤ {age['frame_interval']:.0f} ms (one frame)",
                    _met(age["p99"] <= age["frame_interval"])))  # fmt: skip
    free = capture.get("c3_free_running") or {}
    if free:
        out.append(("C3 free-running at 30 fps ÷ bare model loop",
                    f"{free['ratio_to_bare']:.3f} ({free['inspections_per_s']:.1f}/s vs "
                    f"{free['bare_model_per_s']:.1f}/s, {free['dropped_total']} dropped)",
                    "—", "—"))  # fmt: skip
    for probe in capture.get("c4_capture_cpu") or []:
        if "skipped" in probe:
            out.append((f"C4 capture CPU, {probe['camera']}", "skipped", "—", "—"))
            continue
        out.append((f"C4 capture CPU, {probe['camera']}",
                    f"{probe['cpu_percent_of_one_core']:.1f} % of a core "
                    f"({probe['frames_per_s']:.1f} fps, {probe['cpu_ms_per_frame']:.1f} ms/frame)",
                    "—", "—"))  # fmt: skip
    return out


def format_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of `rows(report)` with the machine line on top."""
    machine = report.get("machine", {})
    table = [("figure", "measured (median)", "target", "met"), *rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        f"machine: {machine.get('cpu_model')}, {machine.get('usable_cores')} usable cores, "
        f"load average {machine.get('load_average_1_5_15')} → "
        f"{report.get('load_average_at_end')}",
    ]
    for n, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
