"""/metrics scraped and parsed with prometheus_client's own parser, against the requests sent.

A real service (the demo package on the real libdlr.so) behind the in-process transport:
twelve parts, three bad requests (not JSON, an undecodable image, an ImagePath outside every
root) and the counts, labels, stage histograms and gauges must all agree with them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from lfv_edge.web.metrics import METRIC_NAMES, STAGES
from tests.web.conftest import Live, http_get


def scrape(port: int) -> dict[str, Metric]:
    answer = http_get(port, "/metrics")
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/plain; version="), answer.headers
    return {f.name: f for f in text_string_to_metric_families(answer.body.decode())}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    family = next(f for f in families.values() if any(s.name == sample for s in f.samples))
    matching = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(matching) == 1, f"one {sample}{labels} in {family.samples}"
    return matching[0]


def test_metrics_agree_with_the_requests_sent(
    make_live: Callable[..., Live], part_requests: list[bytes]
) -> None:
    # given a service with its web view
    live = make_live()
    # when twelve parts and three bad requests are sent
    for payload in part_requests[:12]:
        live.transport.deliver(payload)
    bad = [
        b"this is not a request",
        json.dumps(
            {"RequestId": "garbled", "Body": base64.b64encode(b"\xff\xd8 no").decode()}
        ).encode(),
        json.dumps({"RequestId": "outside", "ImagePath": "/etc/passwd"}).encode(),
    ]
    for bad_payload in bad:
        live.transport.deliver(bad_payload)
    live.wait_listed(15)
    replies = [json.loads(p.payload) for p in live.transport.published if p.topic == "results"]
    # then the parsed metrics say exactly what the replies say
    families = scrape(live.port)
    verdicts = [r for r in replies if "DetectAnomalyResult" in r]
    anomalous = sum(r["DetectAnomalyResult"]["IsAnomalous"] for r in verdicts)
    assert value(families, "lfv_edge_requests_received_total") == 15
    assert value(families, "lfv_edge_replies_total", result="anomalous") == anomalous
    assert value(families, "lfv_edge_replies_total", result="normal") == 12 - anomalous
    assert value(families, "lfv_edge_replies_total", result="error") == 3
    codes: dict[str, int] = {}
    for reply in replies:
        if "Error" in reply:
            codes[reply["Error"]["Code"]] = codes.get(reply["Error"]["Code"], 0) + 1
    assert codes == {"BadRequest": 1, "ImageUnreadable": 1, "PathRefused": 1}, codes
    for code, count in codes.items():
        assert value(families, "lfv_edge_errors_total", code=code) == count, code
    # each anomaly label counts the replies whose mask has that label's pixels
    expected: dict[str, int] = {}
    for reply in verdicts:
        anomalies = reply["DetectAnomalyResult"].get("Anomalies", [])
        for anomaly in anomalies[1:]:
            if anomaly["PixelAnomaly"]["TotalPercentageArea"] > 0:
                expected[anomaly["Name"]] = expected.get(anomaly["Name"], 0) + 1
    assert expected, "the demo parts have anomaly labels"
    for label, count in expected.items():
        assert value(families, "lfv_edge_anomaly_labels_total", label=label) == count, label
    # stage histograms hold one observation per verdict; their sums match the replies' timings
    for stage in STAGES:
        assert value(families, "lfv_edge_stage_duration_seconds_count", stage=stage) == 12, stage
    run_s = sum(r["TimingsMs"]["run"] for r in verdicts) / 1000.0
    measured = value(families, "lfv_edge_stage_duration_seconds_sum", stage="run")
    assert abs(measured - run_s) < 0.001 * 12, f"run seconds {measured} vs replies {run_s}"
    assert value(families, "lfv_edge_request_duration_seconds_count") == 15
    # gauges read at scrape time
    assert value(families, "lfv_edge_queue_depth") == 0
    assert value(families, "lfv_edge_queue_capacity") == 64
    assert value(families, "lfv_edge_transport_connected", transport="memory") == 1
    assert value(families, "lfv_edge_ready") == 1
    assert value(families, "lfv_edge_web_history_entries") == 15
    package = live.service.inspector.package
    info = families["lfv_edge_model_info"].samples[0]
    assert info.labels["name"] == package.name, info.labels
    assert info.labels["version"] == package.version, info.labels
    assert info.labels["device"] == "cpu", info.labels
    assert "process_resident_memory_bytes" in families, "process metrics are there"
    # every documented name is exposed
    exposed = {s.name for f in families.values() for s in f.samples}
    missing = [n for n in METRIC_NAMES if not any(e == n or e.startswith(n + "_") for e in exposed)]
    assert missing == ["lfv_edge_spool_replies", "lfv_edge_spool_bytes"], (
        f"all but the MQTT spool (no spool on this transport) are exposed: {missing}"
    )
