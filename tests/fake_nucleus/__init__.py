"""A fake Greengrass nucleus for tests: real event-stream RPC over a Unix socket.

Owns nothing itself; re-exports the test-facing names. The real awsiotsdk client (in-process
or in a component subprocess) connects to `FakeNucleus.socket_path` with its SVCUID.

    eventstream.py    frame codec (prelude, headers 0-9, CRCs, limits)
    rpc.py            RPC message types, flags, streams, JSON envelopes
    topics.py         MQTT topic filter matching (IoT Core and local pub/sub)
    authorization.py  accessControl policies and resource patterns
    configstore.py    component configuration: lookup, RESET/MERGE, changed leaves
    records.py        what tests assert on
    server.py         FakeNucleus: socket, threads, operations, test-side API
"""

from tests.fake_nucleus.records import (
    Denial,
    FakeNucleusError,
    IotCorePublish,
    LocalPublish,
    StateReport,
    SubscriptionKind,
    ValidityReport,
)
from tests.fake_nucleus.server import NUCLEUS_VERSION, FakeNucleus

__all__ = [
    "NUCLEUS_VERSION",
    "Denial",
    "FakeNucleus",
    "FakeNucleusError",
    "IotCorePublish",
    "LocalPublish",
    "StateReport",
    "SubscriptionKind",
    "ValidityReport",
]
