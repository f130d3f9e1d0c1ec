"""Service-level fuzzing: every request with a RequestId gets exactly one reply carrying it."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given

from lfv_edge.inspection.pipeline import Inspector
from lfv_edge.model.package import read_model_package
from lfv_edge.modelbuild.package import PackageSpec
from lfv_edge.service.core import Service, ServiceSettings
from lfv_edge.service.messages import ERROR_CODES
from lfv_edge.transports.memory import MemoryTransport
from tests.conftest import PackageFactory
from tests.fuzz.conftest import CASES
from tests.fuzz.test_fuzz_inputs import DEEP_REQUEST, NAN_REQUEST, ROOTS, requests, strict_json

_ids = itertools.count()


@pytest.fixture(scope="module")
def served(make_package: PackageFactory) -> Iterator[tuple[Service, MemoryTransport]]:
    inspector = Inspector.load(
        read_model_package(
            make_package(PackageSpec(image_width=64, image_height=64, segmentation_head=True))
        ),
        device="cpu",
    )
    transport = MemoryTransport()
    service = Service(
        inspector,
        [transport],
        settings=ServiceSettings(image_roots=ROOTS, max_payload_bytes=1 << 20),
        queue_size=64,
        stats_interval_s=0,
    )
    service.start()
    yield service, transport
    service.stop(30)
    ids = Counter(json.loads(p.payload).get("RequestId") for p in transport.published)
    duplicates = {rid: n for rid, n in ids.items() if rid is not None and n > 1}
    assert not duplicates, f"requests answered more than once: {duplicates}"


def with_request_id(payload: bytes, request_id: str) -> tuple[bytes, bool]:
    """`payload` made into a JSON object request carrying `request_id` as its first key.

    The flag says whether the reply must carry the id: not for a payload too deep for this
    thread's json.loads. Whether the service's json.loads (on a shallower stack) parses it,
    finds a syntax error further on, or gives up on its depth is not knowable here; its reply
    may then carry no id, but never another one (other RequestId keys are renamed).
    """
    try:
        body: Any = json.loads(payload)
    except RecursionError:  # found by fuzzing: "deep, RequestId: ''" parsed in the service
        rest = payload.lstrip()[1:].replace(b'"RequestId"', b'"RequestIx"')
        return b'{"RequestId": "' + request_id.encode() + b'", ' + rest, False
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"Body": payload.decode("latin-1")}
    body.pop("RequestId", None)
    return json.dumps({"RequestId": request_id, **body}).encode(), True


@given(payload=requests())
@example(payload=DEEP_REQUEST)  # found by fuzzing: no reply at all (RecursionError)
@example(payload=NAN_REQUEST)  # found by fuzzing: a reply that was not JSON (NaN echoed)
def test_every_request_with_an_id_gets_exactly_one_reply(
    payload: bytes, served: tuple[Service, MemoryTransport]
) -> None:
    CASES["service round trips"] += 1
    _, transport = served
    request_id = f"fuzz-{next(_ids)}"
    before = len(transport.published)
    request, certain = with_request_id(payload, request_id)
    transport.deliver(request)
    replies = [strict_json(p.payload) for p in transport.wait_for(before + 1, timeout_s=30)]
    assert len(replies) == before + 1, "one reply per request"
    reply = replies[before]
    expected = {request_id} if certain else {request_id, None}
    assert reply.get("RequestId") in expected, f"the reply carries {request_id}: {reply}"
    if "Error" in reply:
        assert reply["Error"]["Code"] in ERROR_CODES, f"documented code: {reply}"
    else:
        assert isinstance(reply["DetectAnomalyResult"]["IsAnomalous"], bool), "a verdict"
