"""The component as a real process, started with the recipe's Run line, against a fake nucleus.

The component uses the real awsiotsdk client over a Unix socket; the fake nucleus speaks the
event-stream RPC protocol, enforces accessControl and records what the component did.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.greengrass.conftest import (
    OTHER_MODEL_SPEC,
    STARTUP_S,
    THING,
    StartComponent,
    image_bytes,
    reply,
    request,
)

LOCAL_RESULTS = "lfv/results"
IOT_RESULTS = f"lfv/{THING}/results"


def test_local_and_iot_core_requests_are_answered_on_their_topics(
    start_component: StartComponent,
) -> None:
    with start_component() as component:
        nucleus = component.nucleus
        # then: it reported RUNNING once it was serving
        assert nucleus.states == ["RUNNING"], component.logs()
        # when: a local binary request, a local JSON request, a bare image, an IoT Core request
        nucleus.publish_local("lfv/requests", request("local-1", 0.9))
        nucleus.publish_local("lfv/requests", {"RequestId": "local-2", "Body": "bm90IGFuIGltYWdl"})
        nucleus.publish_local("lfv/requests", image_bytes(0.1))
        nucleus.deliver_iot_core(f"lfv/{THING}/requests", request("cloud-1", 0.1))
        # then
        # (error replies skip the model stage, so they may overtake verdicts: match by id)
        local = {
            answer["RequestId"]: answer
            for answer in (
                reply(nucleus.wait_for_local_publish(LOCAL_RESULTS).binary_message)
                for _ in range(3)
            )
        }
        cloud = nucleus.wait_for_iot_core_publish(IOT_RESULTS)
        assert set(local) == {"local-1", "local-2", None}, f"one reply per local request: {local}"
        assert local["local-1"]["DetectAnomalyResult"]["IsAnomalous"] is True, "0.9 is above 0.5"
        assert local["local-2"]["Error"]["Code"] == "ImageUnreadable", "a JSON message is a request"
        assert local[None]["DetectAnomalyResult"]["IsAnomalous"] is False, "a bare PNG is a request"
        assert cloud.qos == "1", "IoT Core replies are QoS 1"
        assert reply(cloud.payload)["RequestId"] == "cloud-1", (
            "the IoT Core reply answers the IoT Core request"
        )
        assert reply(cloud.payload)["ThingName"] == THING, "replies say which device answered"
        assert nucleus.denied == [], "the recipe's accessControl covers every call"
        assert component.alive(), component.logs()


def test_configuration_updates_apply_live_without_restart(start_component: StartComponent) -> None:
    with start_component() as component:
        nucleus = component.nucleus
        pid = component.process.pid
        nucleus.publish_local("lfv/requests", request("before", 0.6))
        before = reply(nucleus.wait_for_local_publish(LOCAL_RESULTS).binary_message)
        assert before["DetectAnomalyResult"]["IsAnomalous"] is True, "0.6 ≥ the manifest's 0.5"
        # when: a deployment MERGE raises the threshold and moves the local topics (with the
        # matching accessControl change in the same MERGE)
        nucleus.update_configuration(
            {
                "model": {"thresholdOverride": "0.7"},
                "ipc": {
                    "localRequestsTopic": "line3/requests",
                    "localResultsTopic": "line3/results",
                },
                "accessControl": {
                    "aws.greengrass.ipc.pubsub": {
                        "com.lfvedge.Inspector:pubsub:1": {"resources": ["line3/requests"]},
                        "com.lfvedge.Inspector:pubsub:2": {"resources": ["line3/results"]},
                    }
                },
            }
        )
        # then: it resubscribes to the new topic and drops the old one
        nucleus.wait_for_subscription("local", "line3/requests", timeout_s=10)
        nucleus.wait_for_unsubscribe("local", "lfv/requests", timeout_s=10)
        nucleus.publish_local("line3/requests", request("after", 0.6))
        after = reply(nucleus.wait_for_local_publish("line3/results").binary_message)
        assert after["DetectAnomalyResult"]["IsAnomalous"] is False, "0.6 < the new 0.7"
        assert after["Threshold"] == 0.7, f"the reply names the threshold used: {after}"
        assert component.process.pid == pid, "the same process"
        assert component.alive(), "no restart"
        assert nucleus.states == ["RUNNING"], "reported RUNNING once: never restarted"


def test_invalid_configuration_is_rejected_naming_the_key(start_component: StartComponent) -> None:
    with start_component() as component:
        nucleus = component.nucleus
        nucleus.wait_for_subscription("validate_configuration")
        proposed = nucleus.configuration()
        # when: a cloud deployment asks first (the nucleus's validation step)
        proposed["queue"] = {"size": "eight", "overflow": "reject"}
        rejected = nucleus.validate_configuration(proposed, "deployment-bad", timeout_s=10)
        proposed["queue"] = {"size": "16", "overflow": "drop_oldest"}
        accepted = nucleus.validate_configuration(proposed, "deployment-good", timeout_s=10)
        # then
        assert rejected.status == "REJECTED", rejected
        assert "queue.size" in (rejected.message or ""), f"names the key: {rejected.message}"
        assert accepted.status == "ACCEPTED", accepted.message
        # when: a local deployment (never validated) applies a bad value anyway
        nucleus.update_configuration({"ipc": {"timeoutS": "soon"}})
        # then: refused with the key named; the running configuration keeps serving
        line = component.output.wait_for(r"configuration refused")
        assert "ipc.timeoutS" in line, f"the log names the refused key: {line}"
        assert line in component.output.lines("stderr"), "errors go to stderr (WARN in Greengrass)"
        nucleus.publish_local("lfv/requests", request("still-serving", 0.9))
        answer = reply(nucleus.wait_for_local_publish(LOCAL_RESULTS).binary_message)
        assert answer["DetectAnomalyResult"]["IsAnomalous"] is True, answer


def test_model_change_reloads_without_dropping_requests(
    start_component: StartComponent, make_package: PackageFactory, tmp_path: Path
) -> None:
    # given a second package (another name and input size) on the device
    other = make_package.copy(OTHER_MODEL_SPEC, dest=tmp_path / "plant-models" / "parts")
    with start_component({"queue": {"size": "64"}}) as component:
        nucleus = component.nucleus
        # when: requests keep coming while a deployment points model.path elsewhere
        for i in range(10):
            nucleus.publish_local("lfv/requests", request(f"before-{i}", 0.9))
        nucleus.update_configuration({"model": {"path": str(other)}})
        for i in range(10):
            nucleus.publish_local("lfv/requests", request(f"during-{i}", 0.9))
        component.output.wait_for(r"inspector replaced: model parts")
        for i in range(5):
            nucleus.publish_local("lfv/requests", request(f"after-{i}", 0.9))
        # then: every request got a verdict, from the old or the new model; later ones the new
        answers = [
            reply(nucleus.wait_for_local_publish(LOCAL_RESULTS).binary_message) for _ in range(25)
        ]
        by_id = {answer["RequestId"]: answer for answer in answers}
        assert len(by_id) == 25, f"one reply per request: {sorted(by_id)}"
        failures = [a for a in answers if "Error" in a]
        assert failures == [], f"no request was dropped or failed by the swap: {failures}"
        models = {a["RequestId"]: a["Model"]["Name"] for a in answers}
        assert {models[f"after-{i}"] for i in range(5)} == {"parts"}, models
        assert models["before-0"] != "parts", f"the first ones ran on the old model: {models}"
        assert nucleus.states == ["RUNNING"], "no restart"


def test_denied_publish_is_reported_and_the_component_keeps_running(
    start_component: StartComponent,
) -> None:
    # given an accessControl without the local results topic
    overrides = {
        "statsIntervalS": "0.2",
        "accessControl": {
            "aws.greengrass.ipc.pubsub": {
                "com.lfvedge.Inspector:pubsub:2": {"resources": ["somewhere/else"]}
            }
        },
    }
    with start_component(overrides) as component:
        nucleus = component.nucleus
        # when
        nucleus.publish_local("lfv/requests", request("denied", 0.9))
        # then: logged, counted in the stats, and the component goes on serving
        line = component.output.wait_for(r"request_id=denied not published")
        assert "denied by accessControl" in line, line
        denial = nucleus.denied[0]
        assert (denial.operation, denial.resource) == (
            "aws.greengrass#PublishToTopic",
            LOCAL_RESULTS,
        ), "the nucleus refused the local reply"
        failures = 0
        for _ in range(50):  # stats snapshots every 0.2 s, each waited for (no sleeping)
            stats = reply(nucleus.wait_for_iot_core_publish(f"lfv/{THING}/stats").payload)
            failures = stats["PublishFailures"]
            if failures:
                break
        assert failures == 1, "the denied reply is counted"
        nucleus.deliver_iot_core(f"lfv/{THING}/requests", request("cloud", 0.9))
        cloud = reply(nucleus.wait_for_iot_core_publish(IOT_RESULTS).payload)
        assert cloud["RequestId"] == "cloud", "still serving"
        assert component.alive(), component.logs()


def test_losing_the_nucleus_exits_non_zero(start_component: StartComponent) -> None:
    with start_component() as component:
        # given: serving (a full round trip: RUNNING's answer has reached the component)
        component.nucleus.publish_local("lfv/requests", request("r1", 0.9))
        component.nucleus.wait_for_local_publish(LOCAL_RESULTS)
        # when: the nucleus dies (a restart, a crash)
        component.nucleus.kill()
        # then: no reconnect in the SDK: exit non-zero so the nucleus restarts us
        code = component.exit_code()
        assert code != 0, component.logs()
        assert "IPC connection lost" in component.logs(), component.logs()
        assert "cannot start" not in component.logs(), "it was serving when the nucleus died"


def test_sigterm_answers_what_was_received_then_exits_zero(
    start_component: StartComponent,
) -> None:
    with start_component({"queue": {"size": "64"}, "statsIntervalS": "0.1"}) as component:
        nucleus = component.nucleus
        ids = {f"r{i}" for i in range(20)}
        for request_id in sorted(ids):
            nucleus.publish_local("lfv/requests", request(request_id, 0.9, side=1024))
        # given: all 20 handed to the service (the stats say so), some maybe still queued
        received = 0
        for _ in range(200):  # a snapshot every 0.1 s, each waited for (no sleeping)
            stats = reply(nucleus.wait_for_iot_core_publish(f"lfv/{THING}/stats").payload)
            received = stats["Received"]
            if received == len(ids):
                break
        assert received == len(ids), "every request reached the service"
        # when: the nucleus stops the component
        component.terminate()
        # then
        assert component.exit_code() == 0, component.logs()
        answers = [reply(p.binary_message) for p in nucleus.local_publishes]
        assert {a["RequestId"] for a in answers} == ids, "every received request was answered"
        assert [a for a in answers if "Error" in a] == [], "drained, not refused"


def test_sigterm_under_a_burst_exits_within_the_nucleus_budget(
    start_component: StartComponent, make_package: PackageFactory
) -> None:
    # given the recipe's defaults (stopTimeoutS 4), a model taking tens of ms per image and
    # 600 IoT Core requests received: seconds of work left when the nucleus stops us
    slow = make_package(PackageSpec(image_width=1000, image_height=1000, network="bench"))
    with start_component({"model": {"path": str(slow)}, "statsIntervalS": "0.1"}) as component:
        nucleus = component.nucleus
        ids = [f"c{i}" for i in range(600)]
        for request_id in ids:
            nucleus.deliver_iot_core(f"lfv/{THING}/requests", request(request_id, 0.9))
        for _ in range(300):  # a snapshot every 0.1 s, each waited for (no sleeping)
            stats = reply(nucleus.wait_for_iot_core_publish(f"lfv/{THING}/stats").payload)
            if stats["Received"] == len(ids):
                break
        assert stats["Received"] == len(ids), "every request reached the service"
        # when the nucleus stops it: SIGTERM, then SIGKILL 5 s later
        started = time.monotonic()
        component.terminate()
        code = component.exit_code()
        elapsed = time.monotonic() - started
        # then it exits 0 before the SIGKILL, having answered each request once: a verdict
        # when there was time, Busy for the rest (IoT Core does not deliver them again)
        assert code == 0, component.logs()
        assert elapsed < 5.0, f"stopped in {elapsed:.2f} s: the nucleus would have killed it"
        answers = [reply(p.payload) for p in nucleus.iot_core_publishes if p.topic == IOT_RESULTS]
        assert sorted(a["RequestId"] for a in answers) == sorted(ids), "one reply each"
        busy = [a for a in answers if a.get("Error", {}).get("Code") == "Busy"]
        verdicts = [a for a in answers if "DetectAnomalyResult" in a]
        assert len(busy) + len(verdicts) == len(ids), "verdicts or Busy, nothing else"
        assert busy, "the burst outlasted the budget (else this test shows nothing)"
        print(f"stop under load: {elapsed:.2f} s, {len(verdicts)} verdicts, {len(busy)} Busy")


@pytest.mark.parametrize(
    ("overrides", "code", "named"),
    [
        ({"queue": {"size": "0"}}, 2, "queue.size"),
        ({"model": {"path": "/nonexistent/model"}}, 3, "/nonexistent/model"),
        (
            {
                "accessControl": {
                    "aws.greengrass.ipc.mqttproxy": {
                        "com.lfvedge.Inspector:mqttproxy:1": {"resources": ["other/+/requests"]}
                    }
                }
            },
            1,
            f"lfv/{THING}/requests",
        ),
    ],
    ids=["bad-config", "missing-model", "subscription-denied"],
)
def test_startup_failure_reports_errored_and_exits_with_its_code(
    start_component: StartComponent, overrides: dict[str, Any], code: int, named: str
) -> None:
    with start_component(overrides, wait_running=False) as component:
        # when
        exit_code = component.exit_code(STARTUP_S)
        # then
        assert exit_code == code, component.logs()
        assert component.nucleus.states == ["ERRORED"], "the nucleus hears why before the exit"
        assert named in "\n".join(component.output.lines("stderr")), component.logs()
